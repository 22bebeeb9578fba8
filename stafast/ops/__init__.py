"""stafast.ops: the public contract other models import.

Three registered ops (namespace `stafast` in torch.ops), each with a fake (meta) implementation
and autograd, callable as plain functions:

- spatial_softmax_pool(logits (M,K,L), feats (M,L,D)) -> pooled (M,K,D), attn (M,K,L)   Eqs. 2-3
- diversity_penalty(attn (M,K,L), kind="hellinger"|"l2", reduction="mean"|"sum"|"none")  Eqs. 9-10
- frame_attention(x (B,N,K,D), bias (N,N), scale) -> (B,N,K,D)                         supp. Eqs. 1-3

Backends: "reference" (plain PyTorch, the spec), "triton", "ext" (C++/CUDA).  Choose with
`with stafast.ops.backend(name):` or STAFAST_BACKEND; by default the fastest available one for
the tensor's device runs, falling back (one warning) only when a backend raises BackendUnavailable.
`available_backends()` lists what works here; `with backends_ran() as ran:` records what ran.
Each op is one OpSpec (stafast/ops/_spec.py), listed in OPS; docs/adding-an-op.md adds one.
"""
from . import reference
from ._backend import BACKENDS, BackendUnavailable, available_backends, backend, backends_ran
from ._spec import OPS
from .diversity_penalty import diversity_penalty
from .frame_attention import frame_attention
from .spatial_softmax_pool import spatial_softmax_pool

__all__ = ["BACKENDS", "BackendUnavailable", "OPS", "available_backends", "backend", "backends_ran",
           "diversity_penalty", "frame_attention", "reference", "spatial_softmax_pool"]
