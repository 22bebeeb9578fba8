"""The extension's large CPU outputs come from a cache of freed blocks (csrc/output_cache.cpp):
a fresh 50 MB grad_feats otherwise costs more in page faults than the kernel. Blocks come back
dirty, so these tests check that the kernels overwrite every element of a reused block."""
import os
import re
import subprocess
import sys

import pytest
import torch

from stafast.ops import available_backends, reference
from .cases import DEVICE, close, like, ssp_inputs

pytestmark = pytest.mark.skipif(DEVICE != "cpu" or "ext" not in available_backends("cpu"),
                                reason="CPU extension not built")
THP = "/sys/kernel/mm/transparent_hugepage/enabled"
SHAPE = (64, 3, 8, 8192)  # grad_feats: 16 MB, over the cache's 4 MB threshold


def _run(code: str, **env) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter: the cache reads its settings once per process."""
    prelude = "import torch, stafast._C\nops = torch.ops.stafast_ext\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_reused_blocks_are_overwritten_in_full():
    logits, feats = ssp_inputs(SHAPE, torch.float32)
    pooled, attn = torch.ops.stafast_ext.spatial_softmax_pool(logits, feats)
    g_pooled, g_attn = like(pooled), like(attn)
    first = torch.ops.stafast_ext.spatial_softmax_pool_backward(g_pooled, g_attn, logits, feats)[1]
    address = first.data_ptr()
    first.fill_(float("nan"))  # what a stale block must not leak into the next output
    del first
    assert torch.ops.stafast_ext.output_cache_bytes() >= feats.nbytes
    grad_logits, grad_feats = torch.ops.stafast_ext.spatial_softmax_pool_backward(g_pooled, g_attn, logits, feats)
    assert grad_feats.data_ptr() == address, "the freed block was not handed out again"
    lo, fe = logits.double().requires_grad_(), feats.double().requires_grad_()
    torch.autograd.backward(reference.spatial_softmax_pool(lo, fe), [g_pooled.double(), g_attn.double()])
    close(grad_feats, fe.grad, torch.float32, "grad_feats from a reused block")
    close(grad_logits, lo.grad, torch.float32, "grad_logits")
    grad_feats.resize_(2 * SHAPE[0], SHAPE[2], SHAPE[3]).fill_(1.0)  # outputs stay ordinary, resizable tensors
    assert grad_feats.sum().item() == grad_feats.numel()
    del grad_feats
    torch.ops.stafast_ext.output_cache_clear()
    assert torch.ops.stafast_ext.output_cache_bytes() == 0


def test_cache_size_setting():
    code = ("l, f = torch.randn(64, 3, 8), torch.randn(64, 8, 8192)\n"
            "pooled = ops.spatial_softmax_pool(l, f)[0]\ndel pooled\nprint(ops.output_cache_bytes())\n")
    off = _run(code, STAFAST_CPU_CACHE_MB="0")
    assert off.returncode == 0 and off.stdout.split() == ["0"], off.stderr
    on = _run(code, STAFAST_CPU_CACHE_MB="64")
    assert on.returncode == 0 and int(on.stdout.split()[0]) >= 64 * 3 * 8192 * 4, on.stderr
    bad = _run(code, STAFAST_CPU_CACHE_MB="lots")
    assert bad.returncode != 0 and "STAFAST_CPU_CACHE_MB must be a whole number of MB >= 0, got 'lots'" in bad.stderr


def _thp_mode() -> str | None:
    try:
        return re.search(r"\[(\w+)\]", open(THP).read()).group(1)
    except (OSError, AttributeError):
        return None


@pytest.mark.skipif(_thp_mode() not in ("madvise", "always"), reason=f"transparent huge pages off ({THP})")
def test_thp_opt_in_puts_outputs_on_huge_pages():
    code = f"""
import re
def huge_kb(address):
    inside = False
    for line in open("/proc/self/smaps"):
        m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            inside = int(m.group(1), 16) <= address < int(m.group(2), 16)
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
def fallbacks():
    return int(dict(line.split() for line in open("/proc/vmstat")).get("thp_fault_fallback", 0))
l, f = torch.randn{SHAPE[:3]}, torch.randn{(SHAPE[0],) + SHAPE[2:]}
p, a = ops.spatial_softmax_pool(l, f)
before = fallbacks()
g = ops.spatial_softmax_pool_backward(torch.randn_like(p), torch.randn_like(a), l, f)[1]
print(huge_kb(g.data_ptr() + g.nbytes // 2), fallbacks() > before)
"""
    on = _run(code, STAFAST_THP="1")
    assert on.returncode == 0, on.stderr
    kb, fell_back = on.stdout.split()
    if fell_back == "True":
        pytest.skip("the kernel had no free huge page at hand (thp_fault_fallback grew)")
    assert int(kb) >= 2048
    if _thp_mode() == "madvise":  # without the advice (the default) the block stays on 4 KB pages
        off = _run(code)
        assert off.returncode == 0 and off.stdout.split()[0] == "0", off.stderr
