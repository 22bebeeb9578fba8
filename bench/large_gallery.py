"""Large galleries: exact evaluation from features (stafast.metrics.evaluate_features) and FAISS search
(stafast.search), on synthetic 128-d features with id structure (stafast.features.synthetic_features:
5 tracklets per person over 6 cameras).

    python bench/large_gallery.py evaluate [--queries 10000 --gallery 1000000] [--device cuda] [--out F.json]
    python bench/large_gallery.py search [--queries 10000 --gallery 1000000] [--kinds flat,ivfpq,hnsw] [--out F.json]

evaluate: wall time and peak resident memory beyond the inputs (Linux VmHWM, reset after the
features exist; on a GPU also torch.cuda.max_memory_allocated); the CPU run uses --threads (2).
search: per index kind, build seconds, query seconds and queries/s for --topk 10, recall@10 of
the approximate kinds against flat (exact) on the same queries, and whether flat equals the exact
top-10 of stafast.metrics.feature_distances (checked on --check queries).
Results are JSON (device, versions, sizes, figures), printed and written to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stafast.features import synthetic_features  # noqa: E402
from stafast.metrics import evaluate_features, feature_distances  # noqa: E402


def rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field)).split()[1]) / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_beyond(run):
    """(run()'s result, wall seconds, CPU seconds, peak resident MB beyond what was resident before it).
    On a shared machine the CPU seconds are the fair figure: a quiet one would take about
    cpu / threads of wall time where the work is parallel."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before, t, c = rss_mb("VmRSS:"), time.perf_counter(), cpu_seconds()
    out = run()
    return out, time.perf_counter() - t, cpu_seconds() - c, rss_mb("VmHWM:") - before


def environment(a) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "cpu": platform.processor() or
           platform.machine(), "threads": torch.get_num_threads(), "loadavg": os.getloadavg(),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    if a.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def bench_evaluate(a) -> dict:
    f = synthetic_features(a.queries, a.gallery, seed=a.seed)
    q, g = f.part(0, "query"), f.part(0, "gallery")
    qf, gf = q.features.to(a.device), g.features.to(a.device)
    run = lambda: evaluate_features(qf, gf, q.pids, g.pids, q.camids, g.camids)  # noqa: E731
    if a.device == "cuda":
        run()  # warm-up (CUDA context, kernels)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    result, seconds, cpu, peak = peak_beyond(run)
    out = {"what": "evaluate_features", "queries": a.queries, "gallery": a.gallery, "dim": qf.shape[1],
           "device": a.device, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb_beyond_inputs": peak,
           "inputs_mb": (qf.numel() + gf.numel()) * 4 / 2 ** 20, "dense_matrix_mb": a.queries * a.gallery * 4 / 2 ** 20,
           "mAP": result["mAP"], "rank1": float(result["cmc"][0]), "num_valid_queries": result["num_valid_queries"]}
    if a.device == "cuda":
        out["peak_cuda_mb_beyond_inputs"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    return out


def bench_search(a) -> dict:
    from stafast.search import GalleryIndex
    f = synthetic_features(a.queries, a.gallery, seed=a.seed)
    q, g = f.part(0, "query"), f.part(0, "gallery")
    rows, exact = {}, None
    for kind in a.kinds.split(","):
        index, built, built_cpu, _ = peak_beyond(lambda: GalleryIndex.build(
            g.features, g.pids, g.camids, g.paths, kind=kind, measure_recall=a.check))
        (dist, found), searched, searched_cpu, _ = peak_beyond(lambda: index.search(q.features, a.topk))
        row = {"build_s": built, "build_cpu_s": built_cpu, "query_s": searched, "query_cpu_s": searched_cpu,
               "queries_per_s": a.queries / searched, "queries_per_cpu_s": a.queries / searched_cpu,
               "params": index.params, "recall_at_10_build_sample": index.recall}
        if kind == "flat":  # the exact top-k (float64 products): the same neighbours, up to float32 near-ties
            exact = found
            want_d, want = torch.sort(feature_distances(q.features[:a.check], g.features).double(), dim=1, stable=True)
            row.update(checked_queries=a.check, topk_distance_max_abs_diff=float(
                np.abs(dist[:a.check] - want_d[:, :a.topk].numpy()).max()), same_topk_rows=float(np.mean(
                [set(x) == set(y) for x, y in zip(found[:a.check], want[:, :a.topk].numpy())])))
        if exact is not None:
            row["recall_at_10"] = float(np.mean([len(set(x) & set(y)) / a.topk for x, y in zip(found, exact)]))
        rows[kind] = row
        print(kind, json.dumps(row), flush=True)
    return {"what": "search", "queries": a.queries, "gallery": a.gallery, "topk": a.topk, "kinds": rows}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("evaluate", "search"))
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--gallery", type=int, default=1_000_000)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch and FAISS)")
    p.add_argument("--kinds", default="flat,ivfpq,hnsw", help="search: index kinds, flat first (the exact reference)")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--check", type=int, default=1000, help="search: queries checked against the exact top-k")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.what == "search":
        import faiss
        faiss.omp_set_num_threads(a.threads)
    result = {**(bench_evaluate(a) if a.what == "evaluate" else bench_search(a)), "env": environment(a)}
    print(json.dumps(result, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
