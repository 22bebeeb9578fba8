"""The backend choice: what auto mode picks, the only errors it falls back on, and what ran.

Each failure is forced on the CPU: a failing kernel registered in place of an ext op with a
test-only torch.library override, an extension that does not import, an extension that lacks an
op, a real Triton compiler failure, an out-of-memory error from a launch."""
import dataclasses
import sys
import warnings

import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget

from stafast import ops
from stafast.ops import _backend
from .cases import BACKENDS, attn_inputs, close, fa_inputs

needs_ext = pytest.mark.skipif("ext" not in BACKENDS, reason="the extension is not built")


@pytest.fixture
def auto(monkeypatch):
    """Auto mode from a clean slate: no backend switched off, no STAFAST_BACKEND."""
    monkeypatch.delenv("STAFAST_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "_off", {})


def penalty() -> dict[str, str]:
    """diversity_penalty forward and backward with the current backend (checked); what ran."""
    attn = attn_inputs((3, 4, 6), requires_grad=True)
    with ops.backends_ran() as ran:
        q = ops.diversity_penalty(attn, reduction="none")
        (grad,) = torch.autograd.grad(q.sum(), attn)
    with ops.backend("reference"):
        want = ops.diversity_penalty(attn, reduction="none")
        (want_grad,) = torch.autograd.grad(want.sum(), attn)
    close(q, want, torch.float64, "Q")
    close(grad, want_grad, torch.float64, "grad")
    return ran


def falls_back_once(match: str, to: str) -> None:
    """penalty() twice in auto mode: exactly one stafast warning, matching `match`; both on `to`."""
    with pytest.warns(RuntimeWarning, match=match) as record:
        ran = penalty()
        assert penalty() == ran
    assert len([w for w in record if "stafast" in str(w.message)]) == 1, [str(w.message) for w in record]
    assert ran == {"diversity_penalty": to, "diversity_penalty_backward": to}


def test_reference_always_available():
    assert "reference" in ops.available_backends("cpu")
    assert set(BACKENDS) <= set(ops.BACKENDS)


def test_context_manager_nests_and_restores(monkeypatch):
    monkeypatch.delenv("STAFAST_BACKEND", raising=False)
    assert _backend.requested() == "auto"
    with ops.backend("reference"):
        assert _backend.requested() == "reference"
        with ops.backend("auto"):
            assert _backend.requested() == "auto"
        assert _backend.requested() == "reference"
    assert _backend.requested() == "auto"


def test_env_var_chooses_and_context_wins(monkeypatch):
    monkeypatch.setenv("STAFAST_BACKEND", "reference")
    assert _backend.resolve(torch.device("cpu")) == ["reference"]
    monkeypatch.setenv("STAFAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown stafast backend 'nonsense'"):
        ops.diversity_penalty(attn_inputs((2, 2, 3)))
    with ops.backend("reference"):
        ops.diversity_penalty(attn_inputs((2, 2, 3)))


def test_unknown_backend_name():
    with pytest.raises(ValueError, match=r"unknown stafast backend 'cuda'.*expected one of"):
        with ops.backend("cuda"):
            pass


def test_auto_never_picks_the_interpreter(monkeypatch):
    monkeypatch.delenv("STAFAST_BACKEND", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "triton" not in _backend.resolve(torch.device("cpu"))
    assert "triton" not in _backend._auto_order("cuda")


def test_unavailable_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(_backend._probe, "ext", "ModuleNotFoundError: No module named 'stafast._C'")
    with pytest.raises(ops.BackendUnavailable,
                       match=r"backend 'ext' was requested but ModuleNotFoundError.*available on cpu"):
        with ops.backend("ext"):
            ops.diversity_penalty(attn_inputs((2, 2, 3)))


def test_backends_ran_names_each_op_and_its_backward():
    x, bias, scale = fa_inputs((2, 3, 2, 5), requires_grad=True)
    for name in BACKENDS:
        with ops.backend(name), ops.backends_ran() as ran:
            ops.frame_attention(x, bias, scale).sum().backward()
        assert ran == {"frame_attention": name, "frame_attention_backward": name}
    with ops.backends_ran() as ran:
        for name in ("reference", BACKENDS[-1], "reference"):
            with ops.backend(name):
                ops.frame_attention(x, bias, scale)
    assert ran == {"frame_attention": "+".join(dict.fromkeys(("reference", BACKENDS[-1])))}


@needs_ext
@pytest.mark.parametrize("error", [RuntimeError("simulated kernel bug"), torch.OutOfMemoryError("simulated OOM")])
def test_a_failing_ext_kernel_raises_under_auto(auto, error):
    def failing(*args):
        raise error
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning either
        with torch.library._scoped_library("stafast_ext", "IMPL") as lib:
            warnings.filterwarnings("ignore", "Overriding a previously registered kernel")
            lib.impl("diversity_penalty", failing, "CPU")
            with pytest.raises(type(error), match="simulated"):
                penalty()
        ran = penalty()  # the real kernel is back, and auto mode still uses it
    assert ran == {"diversity_penalty": "ext", "diversity_penalty_backward": "ext"}


@needs_ext
def test_a_missing_extension_falls_back_with_one_warning(auto, monkeypatch):
    monkeypatch.setitem(sys.modules, "stafast._C", None)  # `import stafast._C` now fails
    monkeypatch.setattr(_backend, "_probe", {})
    falls_back_once("extension stafast._C is not built", to="reference")
    assert "ext" not in ops.available_backends("cpu")


@needs_ext
def test_an_extension_without_the_op_falls_back_with_one_warning(auto, monkeypatch):
    op = ops.OPS["diversity_penalty"]

    def old_build():
        return torch.ops.stafast_ext.no_such_op, None
    monkeypatch.setattr(op, "spec", dataclasses.replace(op.spec, ext=old_build))
    monkeypatch.setattr(op, "_loaded", {})
    falls_back_once(r"diversity_penalty cannot run on backend 'ext' \(the ext backend has no diversity_penalty "
                    r"\(AttributeError.*rebuild it.*uses 'reference'", to="reference")


def _compiler_fails(*args):
    triton.compile(None, target=GPUTarget("no-such-gpu", 0, 32))  # raises inside triton.compile


def _out_of_memory(*args):
    raise torch.OutOfMemoryError("simulated OOM at launch")


@pytest.mark.skipif("triton" not in BACKENDS, reason="the Triton backend does not run here")
@needs_ext
def test_a_triton_compiler_failure_falls_back_with_one_warning_and_nothing_else_does(auto, monkeypatch):
    from stafast.kernels import _common
    real_launch = _common._launch
    monkeypatch.setattr(_backend, "_auto_order", lambda device_type: ("triton", "ext", "reference"))
    monkeypatch.setattr(_common, "_launch", _out_of_memory)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(torch.OutOfMemoryError, match="simulated OOM at launch"):
            penalty()
    monkeypatch.setattr(_common, "_launch", _compiler_fails)
    with pytest.raises(ops.BackendUnavailable, match=r"diversity_penalty: the Triton compiler failed: "
                                                     r"diversity_penalty._forward_kernel: RuntimeError"):
        with ops.backend("triton"):  # asked for by name: the failure is the answer
            penalty()
    falls_back_once(r"diversity_penalty cannot run on backend 'triton' \(diversity_penalty: the Triton compiler "
                    r"failed.*uses 'ext'", to="ext")
    monkeypatch.setattr(_common, "_launch", real_launch)
    with ops.backends_ran() as ran:  # the other ops keep their Triton kernels, this one stays off them
        ops.frame_attention(*fa_inputs((1, 2, 1, 3)))
    assert ran == {"frame_attention": "triton"}
    assert penalty() == {"diversity_penalty": "ext", "diversity_penalty_backward": "ext"}
