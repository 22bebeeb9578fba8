"""k-reciprocal re-ranking at MARS scale: 1,980 queries x 12,180 gallery tracklets, with the
1,980 x 1,980 and 12,180 x 12,180 matrices.

vectorised = stafast.metrics.rerank (torch, on the CPU threads torch uses, or the GPU with
`cuda`); loop = the plain loops of tests/rerank_loop.py (the tests' oracle, dense (Q+G)^2
float32 matrices).  Distances: 2 - 2 cos, as stafast.evaluate measures them, of synthetic
128-d embeddings of 700 identities (random unit centres, Gaussian noise of sd 0.12 per
dimension).  Time: wall clock per call (pytest-benchmark; the loop version takes minutes, so one
round).  Peak memory: each variant once more in a fresh process, its peak RSS during the call
(GPU: peak allocated) minus its RSS with the inputs loaded: extra_info.peak_extra_mb (the
(Q, G) result, 96 MB, included).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stafast.metrics import rerank

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests.rerank_loop import rerank_loop  # noqa: E402

NUM_QUERY, NUM_GALLERY = 1980, 12180
IMPLS = ["vectorised", "vectorised-cuda", "loop"]


def mars_scale_distances(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(700, 128, generator=gen), dim=1)
    ids = torch.randint(0, 700, (NUM_QUERY + NUM_GALLERY,), generator=gen)
    x = F.normalize(centres[ids] + 0.12 * torch.randn(len(ids), 128, generator=gen), dim=1)
    qf, gf = x[:NUM_QUERY], x[NUM_QUERY:]
    dist = lambda a, b: (2 - 2 * a @ b.T).clamp_(min=0).numpy()  # noqa: E731
    return dist(qf, gf), dist(qf, qf), dist(gf, gf)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rerank")
    blocks = mars_scale_distances()
    for name, block in zip(("q_g", "q_q", "g_g"), blocks):
        np.save(folder / f"{name}.npy", block)
    return folder, blocks


# In a fresh process: load the inputs, reset the peak-RSS counter (Linux: clear_refs 5 resets
# VmHWM), one call, then VmHWM - VmRSS before the call.  (getrusage's maxrss would carry the
# parent's peak over the fork.)
MEASURE = """
import json, sys, numpy as np, torch
sys.path.insert(0, {root!r})
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
blocks = [np.load({folder!r} + f"/{{n}}.npy") for n in ("q_g", "q_q", "g_g")]
impl = {impl!r}
if impl == "loop":
    from tests.rerank_loop import rerank_loop as fn
else:
    from stafast.metrics import rerank as fn
    if impl == "vectorised-cuda":
        blocks = [torch.from_numpy(b).cuda() for b in blocks]
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
out = fn(*blocks)
if impl == "vectorised-cuda":
    torch.cuda.synchronize()
    print(json.dumps({{"peak_extra_mb": (torch.cuda.max_memory_allocated() - base) / 2**20}}))
else:
    print(json.dumps({{"peak_extra_mb": status("VmHWM") - before, "rss_with_inputs_mb": before}}))
"""


def peak_memory(folder, impl: str) -> dict:
    code = MEASURE.format(root=ROOT, folder=str(folder), impl=impl)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("impl", IMPLS)
def test_rerank_mars_scale(benchmark, inputs, impl):
    folder, blocks = inputs
    if impl == "vectorised-cuda":
        if not torch.cuda.is_available():
            pytest.skip("no GPU")
        blocks = [torch.from_numpy(b).cuda() for b in blocks]
    fn = rerank_loop if impl == "loop" else rerank

    def call():
        out = fn(*blocks)
        if impl == "vectorised-cuda":
            torch.cuda.synchronize()
        return out

    benchmark.group = f"rerank MARS scale: {NUM_QUERY} x {NUM_GALLERY} (+ both square matrices), k1=20 k2=6"
    if impl == "loop":
        benchmark.pedantic(call, rounds=1, iterations=1)
    else:
        benchmark.pedantic(call, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(op="rerank", impl=impl, threads=torch.get_num_threads(), **peak_memory(folder, impl))
