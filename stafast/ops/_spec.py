"""One op, one spec: `OpSpec` names every layer of an op, `register` builds its torch.library ops.

For op <name>, register(OpSpec(...)) creates
- torch.ops.stafast.<name> and torch.ops.stafast.<name>_backward, with the schemas of the spec's
  reference forward and backward (stafast/ops/reference.py: their signatures are the op's
  signature; tests/ops/test_registration.py checks csrc/stafast.cpp's stafast_ext schemas against
  them), each running on the backend that stafast.ops._backend.dispatch chooses;
- their fakes (torch.compile, torch.export, meta tensors) and one autograd formula for every op:
  the backward op takes one gradient per output of the forward, then the forward's arguments, and
  returns the gradients of the forward's tensor arguments in order (the others get None).
docs/adding-an-op.md is the checklist for a new op.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from . import _backend

Pair = tuple[Callable, Callable]  # (forward, backward) of one backend


@dataclass(frozen=True)
class OpSpec:
    """Every layer of one op, each reachable from here by go-to-definition."""
    name: str                  # the op's name in every layer (torch.ops, kernels/, csrc/, tests, bench)
    forward: Callable          # the reference forward (stafast/ops/reference.py): the math and the signature
    backward: Callable         # its written-out backward: (one gradient per output, forward's args) -> grads
    triton: Callable[[], Pair]  # imports the launchers of kernels/<name>.py (on first use: triton is heavy)
    ext: Callable[[], Pair]    # the C++/CUDA extension's torch.ops.stafast_ext.<name>, <name>_backward
    fake: Callable             # forward's outputs (shapes, dtypes, strides) without computing them
    backward_fake: Callable    # the same for backward
    test_shapes: tuple[tuple[int, ...], ...]  # the shapes every backend is tested at
    inputs: Callable[..., tuple]  # (shape, dtype, device) -> random valid arguments of forward


class Op:
    """The registered ops of one spec: `forward_op` (torch.ops.stafast.<name>) and `backward_op`."""

    def __init__(self, spec: OpSpec):
        forward_args = list(inspect.signature(spec.forward).parameters)
        backward_args = list(inspect.signature(spec.backward).parameters)
        if backward_args[len(backward_args) - len(forward_args):] != forward_args:
            raise TypeError(f"{spec.name}: the backward {spec.backward.__name__}{tuple(backward_args)} must take "
                            f"one gradient per output and then the forward's arguments {tuple(forward_args)}")
        self.spec = spec
        self._loaded: dict[str, Pair] = {}
        self.forward_op = self._define(spec.name, spec.forward, spec.fake, stage=0)
        self.backward_op = self._define(f"{spec.name}_backward", spec.backward, spec.backward_fake, stage=1)
        self.forward_op.register_autograd(self._autograd, setup_context=_save_inputs)
        self.overload = self.forward_op._opoverload  # torch.ops.stafast.<name>.default

    def _define(self, name: str, reference: Callable, fake: Callable, stage: int):
        def run(*args):
            return _backend.dispatch(name, lambda backend: self.functions(backend)[stage], *args)
        op = torch.library.custom_op(f"stafast::{name}", run, mutates_args=(), schema=_schema(reference))
        op.register_fake(fake)
        return op

    def functions(self, backend: str) -> Pair:
        """(forward, backward) of `backend` for this op, loaded on first use."""
        if backend not in self._loaded:
            self._loaded[backend] = _load(self.spec, backend)
        return self._loaded[backend]

    def _autograd(self, ctx, *grads):
        tensors, constants = iter(ctx.saved_tensors), iter(ctx.constants)
        inputs = [next(tensors) if is_tensor else next(constants) for is_tensor in ctx.is_tensor]
        out = self.backward_op(*(g.contiguous() for g in grads), *inputs)
        input_grads = iter(out if isinstance(out, tuple) else (out,))
        return tuple(next(input_grads) if is_tensor else None for is_tensor in ctx.is_tensor)

    def __call__(self, *args):
        """The op on checked arguments: the registered op, or (torch.compile with the reference
        backend) the reference itself, which the compiler then traces inline."""
        return self.spec.forward(*args) if _backend.inline_reference() else self.forward_op(*args)


def _schema(reference: Callable) -> str:
    """The schema of `reference`'s signature without its defaults: the dispatcher would leave out
    trailing arguments equal to a default, which the backends' functions do not all have. The
    public functions (stafast.ops.<name>) keep the defaults."""
    signature = inspect.signature(reference)

    def prototype(*args):
        raise AssertionError("never called")
    prototype.__signature__ = signature.replace(
        parameters=[p.replace(default=inspect.Parameter.empty) for p in signature.parameters.values()])
    return torch.library.infer_schema(prototype, mutates_args=())


def _save_inputs(ctx, inputs, output):
    ctx.is_tensor = tuple(isinstance(a, Tensor) for a in inputs)
    ctx.save_for_backward(*(a for a in inputs if isinstance(a, Tensor)))
    ctx.constants = tuple(a for a in inputs if not isinstance(a, Tensor))


def _load(spec: OpSpec, backend: str) -> Pair:
    if backend == "reference":
        return spec.forward, spec.backward
    try:
        forward, backward = spec.triton() if backend == "triton" else spec.ext()
    except (ImportError, AttributeError) as e:  # no launchers / the built extension lacks the op
        hint = "; rebuild it: pip install --no-build-isolation -e ." if backend == "ext" else ""
        raise _backend.BackendUnavailable(f"the {backend} backend has no {spec.name} "
                                          f"({type(e).__name__}: {e}){hint}") from e
    if backend == "triton":
        return _triton_call(spec.name, forward), _triton_call(f"{spec.name}_backward", backward)
    return forward, backward


def _triton_call(op: str, launcher: Callable) -> Callable:
    """`launcher` refusing what the interpreter gets wrong, a compiler failure as BackendUnavailable."""
    from stafast import kernels

    def run(*args):
        if kernels.INTERPRET:
            refuse_bfloat16(op, args)
        try:
            return launcher(*args)
        except kernels.CompileError as e:
            raise _backend.BackendUnavailable(f"{op}: the Triton compiler failed: {e}") from e
    return run


def refuse_bfloat16(op: str, args: tuple) -> None:
    """The Triton interpreter multiplies the raw bit patterns of bfloat16 tl.dot operands (triton
    issue 11584: it converts only 8-bit floats before its numpy matmul), so every kernel here would
    return garbage for bfloat16 inputs (pooling: relative error ~1e9). float16 is computed exactly."""
    for a in args:
        if isinstance(a, Tensor) and a.dtype == torch.bfloat16:
            raise _backend.BackendUnavailable(
                f"{op}: the Triton backend refuses torch.bfloat16 inputs under TRITON_INTERPRET=1: the "
                "interpreter's tl.dot multiplies the raw bits of bfloat16 operands (triton issue 11584), so "
                "the result would be garbage; run bfloat16 on a GPU or with another backend")


OPS: dict[str, Op] = {}  # op name -> its registered ops, in registration order


def register(spec: OpSpec) -> Op:
    """Create the custom ops of `spec` (see the module doc) and list them in OPS."""
    if spec.name in OPS:
        raise ValueError(f"stafast op {spec.name!r} is registered twice")
    OPS[spec.name] = op = Op(spec)
    return op
