"""The Triton kernels' memory traffic against the minimum, counted by bench/data_movement.py.

At the paper's per-frame shape (K=6, L=32, D=2048, bf16) the pooling forward moves at most 1.1x
the bytes its op must (read logits and feats, write pooled and attn), its backward at most 1.3x.
Few clips keep the interpreter quick; they give the backward more D splits (so more partial sums)
than the paper's 32 clips do, so the bound holds there too.
"""
import json
import os
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "data_movement.py")


def test_pooling_moves_close_to_its_minimum_bytes(tmp_path):
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, BENCH, "--shape", "K=6,L=32,N=6,D=2048,B=4", "--dtype", "bf16",
                           "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.load(open(out))
    ratio = {r["stage"]: r["op_ratio"] for r in rows}
    assert ratio["spatial_softmax_pool.forward"] <= 1.1, ratio
    assert ratio["spatial_softmax_pool.backward"] <= 1.3, ratio
    for r in rows:  # every counted byte belongs to one of the launch's tensors, and none is missed
        assert r["read"] + r["written"] > 0 and r["unattributed"] == 0, r
        assert r["op_bytes"] >= r["op_minimum"], r
