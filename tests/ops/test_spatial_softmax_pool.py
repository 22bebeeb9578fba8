import numpy as np
import pytest
import torch

from stafast import ops
from stafast.ops import reference
from .cases import DEVICE, DTYPES, SSP_SHAPES, backends, close, like, low_precision, np64, ssp_inputs


def oracle(logits, feats):
    """Independent float64 NumPy computation of Eqs. 2-3."""
    e = np64(logits)
    s = np.exp(e - e.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    return np.einsum("mkl,mld->mkd", s, np64(feats)), s


@backends
@pytest.mark.parametrize("shape", SSP_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_values_and_grads(backend_name, shape, dtype):
    logits, feats = ssp_inputs(shape, dtype, requires_grad=True)
    with ops.backend(backend_name):
        pooled, attn = ops.spatial_softmax_pool(logits, feats)
    assert pooled.shape == shape[:2] + shape[3:] and attn.shape == shape[:3]
    assert pooled.dtype == dtype and attn.dtype == dtype
    want_pooled, want_attn = oracle(logits, feats)
    close(pooled, torch.from_numpy(want_pooled), dtype, "pooled")
    close(attn, torch.from_numpy(want_attn), dtype, "attn")

    g_pooled, g_attn = like(pooled), like(attn)
    grads = torch.autograd.grad((pooled, attn), (logits, feats), (g_pooled, g_attn))
    l64, f64 = (t.detach().double().requires_grad_() for t in (logits, feats))
    want = torch.autograd.grad(reference.spatial_softmax_pool(l64, f64), (l64, f64), (g_pooled.double(), g_attn.double()))
    close(grads[0], want[0], dtype, "grad logits")
    close(grads[1], want[1], dtype, "grad feats")


@backends
def test_grad_through_pooled_only(backend_name):
    logits, feats = ssp_inputs((3, 2, 9, 11), requires_grad=True)
    with ops.backend(backend_name):
        ops.spatial_softmax_pool(logits, feats)[0].square().sum().backward()
    l64, f64 = (t.detach().clone().requires_grad_() for t in (logits, feats))
    reference.spatial_softmax_pool(l64, f64)[0].square().sum().backward()
    close(logits.grad, l64.grad, torch.float64, "grad logits")
    close(feats.grad, f64.grad, torch.float64, "grad feats")


@backends
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 1, 7, 3)])
def test_gradcheck(backend_name, shape):
    logits, feats = ssp_inputs(shape, requires_grad=True)
    with ops.backend(backend_name):
        assert torch.autograd.gradcheck(ops.spatial_softmax_pool, (logits, feats))


@backends
def test_opcheck(backend_name):
    logits, feats = ssp_inputs((3, 2, 7, 5), torch.float32, requires_grad=True)
    with ops.backend(backend_name):
        torch.library.opcheck(torch.ops.stafast.spatial_softmax_pool.default, (logits, feats))
        g = (torch.randn(3, 2, 5, device=DEVICE), torch.randn(3, 2, 7, device=DEVICE))
        torch.library.opcheck(torch.ops.stafast.spatial_softmax_pool_backward.default,
                              (*g, logits.detach(), feats.detach()))


@low_precision
def test_16_bit(backend_name, dtype):
    logits, feats = ssp_inputs((3, 2, 7, 5), dtype, requires_grad=True)
    with ops.backend(backend_name):
        pooled, attn = ops.spatial_softmax_pool(logits, feats)
        g = like(pooled)
        grads = torch.autograd.grad(pooled, (logits, feats), g)
    assert pooled.dtype == attn.dtype == dtype
    close(pooled, torch.from_numpy(oracle(logits, feats)[0]), dtype, "pooled")
    want = reference.spatial_softmax_pool_backward(g.double(), torch.zeros(3, 2, 7, dtype=torch.float64, device=DEVICE),
                                                   logits.detach().double(), feats.detach().double())
    close(grads[0], want[0], dtype, "grad logits")
    close(grads[1], want[1], dtype, "grad feats")


@pytest.mark.parametrize("make, match", [
    (lambda: (torch.randn(2, 3), torch.randn(2, 3, 4)), r"logits must have shape \(M, K, L\).*got shape \(2, 3\)"),
    (lambda: (torch.randn(2, 3, 4), torch.randn(2, 5, 6)), r"feats has shape \(2, 5, 6\).*L \(grid cells\).*expected shape \(2, 4, D\)"),
    (lambda: (torch.randn(2, 3, 4), torch.randn(3, 4, 6)), r"feats has shape \(3, 4, 6\).*M \(frames\).*expected shape \(2, 4, D\)"),
    (lambda: (torch.randn(2, 3, 4), torch.randn(2, 4, 6, dtype=torch.float64)), r"same dtype, got torch.float32 and torch.float64"),
    (lambda: (torch.randint(0, 3, (2, 3, 4)), torch.randn(2, 4, 6)), r"logits must be float16.*got torch.int64"),
    (lambda: (torch.randn(2, 3, 4), torch.randn(2, 4, 6, device="meta")), r"same device, got cpu and meta"),
    (lambda: (torch.randn(2, 3, 0), torch.randn(2, 0, 6)), r"logits .* must not be empty, got shape \(2, 3, 0\)"),
    (lambda: ([1.0], torch.randn(2, 4, 6)), r"logits must be a torch.Tensor"),
])
def test_bad_inputs(make, match):
    with pytest.raises(ValueError, match=match):
        ops.spatial_softmax_pool(*make())
