import pytest
import torch

from harness import DEVICE, SHAPES, bench, group, implementation, params


@pytest.mark.parametrize("impl, mode, shape, dtype", params())
def test_spatial_softmax_pool(benchmark, impl, mode, shape, dtype):
    s = SHAPES[shape]
    m = s["B"] * s["N"]
    logits = torch.randn(m, s["K"], s["L"], device=DEVICE, dtype=dtype).mul(2).requires_grad_()
    feats = torch.randn(m, s["L"], s["D"], device=DEVICE, dtype=dtype).requires_grad_()
    moved = (logits.numel() + 2 * feats.numel() + m * s["K"] * s["D"]) * logits.element_size()
    bench(benchmark, implementation("spatial_softmax_pool", impl), (logits, feats), mode,
          group("spatial_softmax_pool", mode, shape, dtype),
          dict(op="spatial_softmax_pool", impl=impl, shape=s, dtype=str(dtype), fwd_bytes=moved - feats.numel() * feats.element_size()))
