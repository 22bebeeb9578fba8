import pytest
import torch

from harness import DEVICE, SHAPES, bench, group, implementation, params


@pytest.mark.parametrize("impl, mode, shape, dtype", params())
def test_diversity_penalty(benchmark, impl, mode, shape, dtype):
    s = SHAPES[shape]
    attn = torch.softmax(3 * torch.randn(s["B"] * s["N"], s["K"], s["L"], device=DEVICE), -1).to(dtype).requires_grad_()
    bench(benchmark, implementation("diversity_penalty", impl), (attn, "hellinger"), mode,
          group("diversity_penalty", mode, shape, dtype),
          dict(op="diversity_penalty", impl=impl, shape=s, dtype=str(dtype), fwd_bytes=attn.numel() * attn.element_size()))
