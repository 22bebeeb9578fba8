import pytest
import torch

from stafast import ops
from stafast.ops import _backend
from .cases import BACKENDS, attn_inputs


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


def test_auto_on_cpu_never_picks_the_interpreter(monkeypatch):
    monkeypatch.delenv("STAFAST_BACKEND", raising=False)
    assert "triton" not in _backend.resolve(torch.device("cpu"))


def test_unavailable_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(_backend._probe, "ext", "ModuleNotFoundError: No module named 'stafast._C'")
    with pytest.raises(RuntimeError, match=r"backend 'ext' was requested but ModuleNotFoundError.*available on cpu"):
        with ops.backend("ext"):
            ops.diversity_penalty(attn_inputs((2, 2, 3)))


def test_auto_falls_back_when_a_backend_fails(monkeypatch):
    monkeypatch.delenv("STAFAST_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "_AUTO_ORDER", {"cpu": ("triton", "reference")})
    monkeypatch.setattr(_backend, "_works_on", lambda name, device_type: True)
    monkeypatch.setattr(_backend, "_broken", {})

    def broken():
        raise RuntimeError("simulated compile failure")

    impls = {"triton": broken, "reference": lambda: (lambda a: a + 1, None)}
    with pytest.warns(RuntimeWarning, match="backend 'triton' failed.*simulated compile failure.*falling back to 'reference'"):
        assert _backend.dispatch(impls, 0, torch.device("cpu"), 1) == 2
    assert _backend.resolve(torch.device("cpu")) == ["reference"]


def test_missing_extension_is_reported_once(monkeypatch):
    real_import = _backend.importlib.import_module

    def fake_import(name):
        if name == "stafast._C":
            raise ModuleNotFoundError("No module named 'stafast._C'")
        return real_import(name)

    monkeypatch.setattr(_backend.importlib, "import_module", fake_import)
    monkeypatch.setattr(_backend, "_probe", {})
    with pytest.warns(RuntimeWarning, match="extension stafast._C is not built") as record:
        assert "ext" not in ops.available_backends("cpu")
        assert "ext" not in ops.available_backends("cpu")
    assert len([w for w in record if "stafast._C" in str(w.message)]) == 1
    with ops.backend("reference"):  # still works
        ops.diversity_penalty(attn_inputs((2, 2, 3)))
