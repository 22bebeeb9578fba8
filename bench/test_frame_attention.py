import pytest
import torch

from harness import DEVICE, SHAPES, bench, group, implementation, params


@pytest.mark.parametrize("impl, mode, shape, dtype", params())
def test_frame_attention(benchmark, impl, mode, shape, dtype):
    s = SHAPES[shape]
    x = torch.randn(s["B"], s["N"], s["K"], s["D"], device=DEVICE, dtype=dtype).requires_grad_()
    bias = torch.randn(s["N"], s["N"], device=DEVICE, dtype=dtype).requires_grad_()
    scale = s["D"] ** -0.5
    bench(benchmark, implementation("frame_attention", impl), (x, bias, scale), mode,
          group("frame_attention", mode, shape, dtype),
          dict(op="frame_attention", impl=impl, shape=s, dtype=str(dtype), fwd_bytes=2 * x.numel() * x.element_size()))
