"""Triton kernels of the stafast ops, imported as stafast.kernels (launchers only, no torch.library code).

Each op's module (kernels/<op>.py) has `forward` and `backward` launchers with the signatures of
the op's reference (stafast/ops/reference.py), which stafast/ops/<op>.py imports by name, and
`examples(shape, dtype, make)`: its launches at a model shape {B clips, N frames, K heads, L cells,
D channels} as (stage, launcher, arguments), with tensors from `make(*size, dtype=)`. OPS lists
the modules; stafast.kernels.aot (compiled for a GPU, without one) and bench/data_movement.py
(bytes moved) run `examples()`, those of every op. A launch whose kernel does not compile raises
CompileError (the ops' auto mode then falls back); INTERPRET says whether launches run in the
Triton interpreter (TRITON_INTERPRET=1 when this was imported).
"""
from . import diversity_penalty, frame_attention, spatial_softmax_pool
from ._common import INTERPRET, CompileError

OPS = (spatial_softmax_pool, diversity_penalty, frame_attention)


def examples(shape: dict, dtype, make) -> list[tuple[str, object, tuple]]:
    """Every op's examples, each stage named "<op>.<stage>"."""
    return [(f"{module.__name__.rsplit('.', 1)[-1]}.{stage}", launcher, args) for module in OPS
            for stage, launcher, args in module.examples(shape, dtype, make)]


__all__ = ["CompileError", "INTERPRET", "OPS", "diversity_penalty", "examples", "frame_attention",
           "spatial_softmax_pool"]
