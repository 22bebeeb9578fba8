"""Triton kernels of the stafast ops, imported as stafast.kernels (launchers only, no torch.library code).

Each op's module (kernels/<op>.py) has `forward` and `backward` launchers with the signatures of
the op's reference (stafast/ops/reference.py); stafast/ops/<op>.py imports them by name.  A launch
whose kernel does not compile raises CompileError (the ops' auto mode then falls back); INTERPRET
says whether launches run in the Triton interpreter (TRITON_INTERPRET=1 when this was imported).
"""
from . import diversity_penalty, frame_attention, spatial_softmax_pool
from ._common import INTERPRET, CompileError

__all__ = ["CompileError", "INTERPRET", "diversity_penalty", "frame_attention", "spatial_softmax_pool"]
