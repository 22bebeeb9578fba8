import numpy as np
import pytest
import torch

from stafast import ops
from stafast.ops import reference
from .cases import DEVICE, DIV_SHAPES, DTYPES, attn_inputs, backends, close, low_precision, np64


def oracle(attn, kind):
    """Independent float64 NumPy computation of Eq. 9 / Eq. 10, and of the documented
    Hellinger gradient (0 where attn == 0) for an all-ones upstream gradient."""
    s = np64(attn)
    r = np.sqrt(s) if kind == "hellinger" else s
    e = r @ r.transpose(0, 2, 1) - np.eye(s.shape[1])
    q = (e ** 2).sum((1, 2))
    er = e @ r
    if kind == "hellinger":
        grad = np.where(s > 0, 2 * er / np.where(s > 0, r, 1), 0.0)
    else:
        grad = 4 * er
    return q, grad


@backends
@pytest.mark.parametrize("shape", DIV_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["hellinger", "l2"])
def test_values_and_grads(backend_name, shape, dtype, kind):
    attn = attn_inputs(shape, dtype, requires_grad=True)
    with ops.backend(backend_name):
        q = ops.diversity_penalty(attn, kind, reduction="none")
    assert q.shape == shape[:1] and q.dtype == dtype
    close(q, torch.from_numpy(oracle(attn, kind)[0]), dtype, "Q")

    g = torch.rand(shape[0], dtype=dtype, device=DEVICE) + 0.5
    (grad,) = torch.autograd.grad(q, attn, g)
    a64 = attn.detach().double().requires_grad_()
    (want,) = torch.autograd.grad(reference.diversity_penalty(a64, kind), a64, g.double())
    close(grad, want, dtype, "grad attn")


@backends
@pytest.mark.parametrize("kind", ["hellinger", "l2"])
def test_exact_zeros_give_finite_documented_grads(backend_name, kind):
    attn = attn_inputs((6, 5, 21), zeros=True, requires_grad=True)
    assert (attn == 0).sum() > 10
    with ops.backend(backend_name):
        q = ops.diversity_penalty(attn, kind, reduction="sum")
    q.backward()
    want_q, want_grad = oracle(attn, kind)
    assert torch.isfinite(attn.grad).all()
    close(q, torch.tensor(want_q.sum()), torch.float64, "Q")
    close(attn.grad, torch.from_numpy(want_grad), torch.float64, "grad attn")


@backends
def test_reductions(backend_name):
    attn = attn_inputs((4, 3, 10))
    with ops.backend(backend_name):
        per_frame = ops.diversity_penalty(attn, reduction="none")
        close(ops.diversity_penalty(attn), per_frame.mean(), torch.float64, "mean")
        close(ops.diversity_penalty(attn, reduction="sum"), per_frame.sum(), torch.float64, "sum")


def test_known_values():
    # K identical rows: R R^T is all ones, so Q = K^2 - K; disjoint one-hot rows: Q = 0.
    same = torch.full((1, 4, 8), 1 / 8, dtype=torch.float64)
    assert ops.diversity_penalty(same).item() == pytest.approx(12.0)
    disjoint = torch.eye(8, dtype=torch.float64)[:4][None]
    assert ops.diversity_penalty(disjoint).item() == pytest.approx(0.0)
    assert ops.diversity_penalty(disjoint, "l2").item() == pytest.approx(0.0)


@backends
@pytest.mark.parametrize("kind", ["hellinger", "l2"])
def test_gradcheck(backend_name, kind):
    attn = attn_inputs((3, 4, 6), requires_grad=True, spread=0.5)
    with ops.backend(backend_name):
        assert torch.autograd.gradcheck(lambda a: ops.diversity_penalty(a, kind, reduction="none"), (attn,))


@backends
def test_opcheck(backend_name):
    attn = attn_inputs((3, 4, 6), torch.float32, requires_grad=True)
    with ops.backend(backend_name):
        for kind in ("hellinger", "l2"):
            torch.library.opcheck(torch.ops.stafast.diversity_penalty.default, (attn, kind))
            torch.library.opcheck(torch.ops.stafast.diversity_penalty_backward.default,
                                  (torch.randn(3, device=DEVICE), attn.detach(), kind))


@low_precision
def test_16_bit_gives_float32(backend_name, dtype):
    attn = attn_inputs((3, 4, 6), dtype, requires_grad=True)
    with ops.backend(backend_name):
        q = ops.diversity_penalty(attn, reduction="none")
        q.sum().backward()
    assert q.dtype == torch.float32 and attn.grad.dtype == dtype
    want_q, want_grad = oracle(attn, "hellinger")
    close(q, torch.from_numpy(want_q), dtype, "Q")
    close(attn.grad, torch.from_numpy(want_grad), dtype, "grad attn")


@pytest.mark.parametrize("args, match", [
    ((torch.rand(3, 4),), r"attn must have shape \(M, K, L\).*got shape \(3, 4\)"),
    ((torch.rand(3, 4, 5), "kl"), r"kind must be one of \('hellinger', 'l2'\), got 'kl'"),
    ((torch.rand(3, 4, 5), "hellinger", "max"), r"reduction must be one of \('mean', 'sum', 'none'\), got 'max'"),
    ((torch.ones(3, 4, 5, dtype=torch.int32),), r"attn must be float16.*got torch.int32"),
])
def test_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        ops.diversity_penalty(*args)
