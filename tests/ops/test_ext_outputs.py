"""The extension's large CPU outputs are advised onto transparent huge pages (csrc/common.h,
empty_output): a fresh 50 MB grad_feats otherwise costs more in 4 KB page faults than the kernel."""
import os
import re

import pytest
import torch

from stafast.ops import available_backends
from .cases import DEVICE, like, ssp_inputs

THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def _thp_mode() -> str | None:
    try:
        return re.search(r"\[(\w+)\]", open(THP).read()).group(1)
    except (OSError, AttributeError):
        return None


def _fallbacks() -> int:
    stats = dict(line.split() for line in open("/proc/vmstat"))
    return int(stats.get("thp_fault_fallback", 0))


def _huge_kb(address: int) -> int:
    """AnonHugePages of the mapping that holds `address` (from /proc/self/smaps)."""
    inside = False
    for line in open("/proc/self/smaps"):
        m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            inside = int(m.group(1), 16) <= address < int(m.group(2), 16)
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    raise AssertionError(f"no mapping holds address {address:#x}")


@pytest.mark.skipif(DEVICE != "cpu" or "ext" not in available_backends("cpu"), reason="CPU extension not built")
@pytest.mark.skipif(_thp_mode() not in ("madvise", "always"), reason=f"transparent huge pages off ({THP})")
def test_large_cpu_outputs_are_on_huge_pages():
    if os.environ.get("STAFAST_THP") == "0":
        pytest.skip("STAFAST_THP=0 turns the advice off")
    logits, feats = ssp_inputs((64, 3, 8, 8192), torch.float32)  # grad_feats: 16 MB
    pooled, attn = torch.ops.stafast_ext.spatial_softmax_pool(logits, feats)
    before = _fallbacks()
    _, grad_feats = torch.ops.stafast_ext.spatial_softmax_pool_backward(like(pooled), like(attn), logits, feats)
    if _fallbacks() > before:
        pytest.skip("the kernel had no free huge page at hand (thp_fault_fallback grew)")
    assert _huge_kb(grad_feats.data_ptr() + grad_feats.nbytes // 2) >= 2048
