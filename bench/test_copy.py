"""Device copy bandwidth, measured in the same run as the ops: the yardstick for their bandwidth."""
import torch

from harness import DEVICE, bench


def test_copy_bandwidth(benchmark):
    n = (256 if DEVICE == "cuda" else 48) * 2**20 // 4
    src = torch.randn(n, device=DEVICE)
    dst = torch.empty_like(src)
    bench(benchmark, lambda s: dst.copy_(s), (src,), "fwd", "copy",
          dict(op="copy", impl="copy", bytes=2 * src.numel() * src.element_size()))
