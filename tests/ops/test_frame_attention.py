import math

import numpy as np
import pytest
import torch

from stafast import ops
from stafast.ops import reference
from .cases import DEVICE, DTYPES, FA_SHAPES, backends, close, fa_inputs, like, low_precision, np64


def oracle(x, bias, scale):
    """Independent float64 NumPy loop over clips and heads (supplementary Eqs. 1-3, rows)."""
    xs, bs = np64(x), np64(bias)
    out = np.empty_like(xs)
    for b in range(xs.shape[0]):
        for k in range(xs.shape[2]):
            xk = xs[b, :, k]                              # (N, D)
            a = scale * xk @ xk.T + bs
            c = np.exp(a - a.max(1, keepdims=True))
            c /= c.sum(1, keepdims=True)                  # row i: contributions to frame i
            out[b, :, k] = c @ xk
    return out


@backends
@pytest.mark.parametrize("shape", FA_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_values_and_grads(backend_name, shape, dtype):
    x, bias, scale = fa_inputs(shape, dtype, requires_grad=True)
    with ops.backend(backend_name):
        out = ops.frame_attention(x, bias, scale)
    assert out.shape == shape and out.dtype == dtype
    close(out, torch.from_numpy(oracle(x, bias, scale)), dtype, "out")

    g = like(out)
    grads = torch.autograd.grad(out, (x, bias), g)
    x64, b64 = (t.detach().double().requires_grad_() for t in (x, bias))
    want = torch.autograd.grad(reference.frame_attention(x64, b64, scale), (x64, b64), g.double())
    close(grads[0], want[0], dtype, "grad x")
    close(grads[1], want[1], dtype, "grad bias")


@backends
@pytest.mark.parametrize("shape", [(2, 3, 2, 4), (1, 1, 1, 3)])
def test_gradcheck(backend_name, shape):
    x, bias, scale = fa_inputs(shape, requires_grad=True)
    with ops.backend(backend_name):
        assert torch.autograd.gradcheck(lambda x, b: ops.frame_attention(x, b, scale), (x, bias))


@backends
def test_opcheck(backend_name):
    x, bias, scale = fa_inputs((2, 3, 2, 5), torch.float32, requires_grad=True)
    with ops.backend(backend_name):
        torch.library.opcheck(torch.ops.stafast.frame_attention.default, (x, bias, scale))
        torch.library.opcheck(torch.ops.stafast.frame_attention_backward.default,
                              (torch.randn(2, 3, 2, 5, device=DEVICE), x.detach(), bias.detach(), scale))


@low_precision
def test_16_bit(backend_name, dtype):
    x, bias, scale = fa_inputs((2, 3, 2, 5), dtype, requires_grad=True)
    with ops.backend(backend_name):
        out = ops.frame_attention(x, bias, scale)
        g = like(out)
        grads = torch.autograd.grad(out, (x, bias), g)
    assert out.dtype == grads[0].dtype == grads[1].dtype == dtype
    close(out, torch.from_numpy(oracle(x, bias, scale)), dtype, "out")
    want = reference.frame_attention_backward(g.double(), x.detach().double(), bias.detach().double(), scale)
    close(grads[0], want[0], dtype, "grad x")
    close(grads[1], want[1], dtype, "grad bias")


def test_rows_are_the_contributions_to_frame_i():
    # A bias that makes every frame attend only to frame 0 copies frame 0 into all rows.
    x = torch.randn(1, 4, 2, 3, dtype=torch.float64)
    bias = torch.full((4, 4), -1e4, dtype=torch.float64)
    bias[:, 0] = 0
    out = ops.frame_attention(x, bias, 0.0)
    close(out, x[:, :1].expand_as(x), torch.float64, "out")


@pytest.mark.parametrize("args, match", [
    ((torch.randn(2, 3, 4), torch.randn(3, 3), 1.0), r"x must have shape \(B, N, K, D\).*got shape \(2, 3, 4\)"),
    ((torch.randn(2, 3, 2, 4), torch.randn(4, 4), 1.0), r"bias has shape \(4, 4\) but must be \(N, N\) = \(3, 3\)"),
    ((torch.randn(2, 3, 2, 4), torch.randn(3), 1.0), r"bias must have shape \(N, N\).*got shape \(3,\)"),
    ((torch.randn(2, 3, 2, 4), torch.randn(3, 3, dtype=torch.float64), 1.0), r"same dtype"),
    ((torch.randn(2, 3, 2, 4), torch.randn(3, 3), math.inf), r"scale must be a finite float, got inf"),
    ((torch.randn(2, 3, 2, 4), torch.randn(3, 3), math.nan), r"scale must be a finite float, got nan"),
    ((torch.randn(2, 3, 2, 4), torch.randn(3, 3), torch.tensor(1.0)), r"scale must be a Python float"),
])
def test_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        ops.frame_attention(*args)
