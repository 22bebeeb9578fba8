"""Every op is one OpSpec, registered by stafast.ops._spec.register: its custom ops take the
reference's signatures, the C++ extension declares the same schemas, and the Triton interpreter
refuses what it would compute wrongly."""
import dataclasses

import pytest
import torch

from stafast import ops
from stafast.ops import _spec, reference
from .cases import BACKENDS, DEVICE

# stafast_ext ops that are no stafast op's layer: the extension's own helpers (csrc/stafast.cpp)
EXT_HELPERS = {"has_cuda", "output_cache_bytes", "output_cache_clear"}
OPS = list(ops.OPS.values())
names = pytest.mark.parametrize("name", [n for op in OPS for n in (op.spec.name, f"{op.spec.name}_backward")])


def ext_ops() -> set[str]:
    pytest.importorskip("stafast._C", reason="the extension is not built")
    return {n.removeprefix("stafast_ext::") for n in torch._C._dispatch_get_all_op_names()
            if n.startswith("stafast_ext::")}


def test_every_op_of_the_package_is_registered_from_its_spec():
    assert [op.spec.name for op in OPS] == ["diversity_penalty", "frame_attention", "spatial_softmax_pool"]
    for op in OPS:
        assert op.overload is op.forward_op._opoverload is getattr(torch.ops.stafast, op.spec.name).default
        assert op.backward_op._opoverload is getattr(torch.ops.stafast, f"{op.spec.name}_backward").default
        assert op.spec.forward is getattr(reference, op.spec.name)
        assert op.spec.backward is getattr(reference, f"{op.spec.name}_backward")


@names
def test_the_extension_declares_the_python_schema(name):
    assert name in ext_ops(), f"csrc/stafast.cpp declares no stafast_ext::{name}"
    python = str(getattr(torch.ops.stafast, name).default._schema).removeprefix("stafast::")
    cpp = str(getattr(torch.ops.stafast_ext, name).default._schema).removeprefix("stafast_ext::")
    assert cpp == python, f"csrc/stafast.cpp declares stafast_ext::{cpp}, the reference gives {python}"


def test_the_extension_has_no_op_without_a_spec():
    specs = {n for op in OPS for n in (op.spec.name, f"{op.spec.name}_backward")}
    assert ext_ops() - EXT_HELPERS == specs


def test_a_backward_that_does_not_take_the_forward_arguments_is_refused():
    spec = ops.OPS["frame_attention"].spec

    def backward(grad, x, scale, bias):
        return x, bias
    with pytest.raises(TypeError, match=r"not_registered: the backward backward\('grad', 'x', 'scale', 'bias'\) "
                                        r"must take one gradient per output and then the forward's arguments "
                                        r"\('x', 'bias', 'scale'\)"):
        _spec.Op(dataclasses.replace(spec, name="not_registered", backward=backward))
    assert not hasattr(torch.ops.stafast, "not_registered")


def _bfloat16_calls(op):
    """(forward args, backward args) at the op's second test shape, in bfloat16."""
    inputs = op.spec.inputs(op.spec.test_shapes[1], torch.bfloat16, DEVICE)
    outputs = op.spec.forward(*inputs)
    grads = [torch.randn_like(o) for o in (outputs if isinstance(outputs, tuple) else (outputs,))]
    return (op.forward_op, inputs), (op.backward_op, (*grads, *inputs))


@pytest.mark.skipif("triton" not in BACKENDS or DEVICE != "cpu", reason="needs the Triton interpreter")
@pytest.mark.parametrize("op", OPS, ids=[op.spec.name for op in OPS])
def test_the_interpreter_refuses_bfloat16(op):
    for (fn, args), name in zip(_bfloat16_calls(op), (op.spec.name, f"{op.spec.name}_backward")):
        with ops.backend("triton"), pytest.raises(ops.BackendUnavailable) as error:
            fn(*args)
        message = str(error.value)
        assert message.startswith(f"{name}: the Triton backend refuses torch.bfloat16 inputs under TRITON_INTERPRET=1")
        assert "triton issue 11584" in message
