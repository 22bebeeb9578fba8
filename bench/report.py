"""Markdown table of a benchmark run: ratios against eager and torch.compile, bandwidth.

    pytest bench --benchmark-only --benchmark-json=bench/results/RUN.json
    python bench/report.py bench/results/RUN.json > table.md

Time per implementation is the median (on GPU the do_bench median in extra_info).
"speedup vs X" = time(X) / time(impl).  Bandwidth (forward, minimum bytes moved / time) is
given against the copy bandwidth measured in the same run.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def seconds(b: dict) -> float:
    extra = b.get("extra_info", {})
    return extra["median_ms"] / 1e3 if "median_ms" in extra else b["stats"]["median"]


def header(run: dict) -> str:
    """Device and versions as the first benchmark that records them has them (the op benchmarks of
    harness.py do; the data and evaluation ones do not), the machine and the date."""
    env = next((b["extra_info"] for b in run["benchmarks"] if "device" in b["extra_info"]), None)
    machine = run["machine_info"]
    where = (f"Device: {env['device']}; torch {env['torch']}, triton {env['triton']}" if env else
             f"Device and versions: not recorded by these benchmarks; python {machine.get('python_version', '?')}")
    return (f"{where}; machine: {machine.get('cpu', {}).get('brand_raw', machine.get('processor'))}; "
            f"date {run.get('datetime', '?')[:19]}.")


def main(path: str) -> str:
    run = json.load(open(path))
    benches = run["benchmarks"]
    copy = [b for b in benches if b["extra_info"].get("op") == "copy"]
    copy_bw = copy[0]["extra_info"]["bytes"] / seconds(copy[0]) if copy else None
    groups = defaultdict(dict)
    data = [b for b in benches if b["extra_info"].get("op") == "data"]
    evals = [b for b in benches if b["extra_info"].get("op") == "evaluate"]
    for b in benches:
        if b["extra_info"].get("op") not in ("copy", "data", "evaluate"):
            groups[b["group"]][b["extra_info"]["impl"]] = b
    lines = [header(run)]
    if copy_bw:
        lines += ["", f"Measured copy bandwidth: {copy_bw / 1e9:.1f} GB/s (read + write)."]
    if groups:
        lines += ["", "| op, mode, shape, dtype | impl | median | vs eager | vs compile | fwd bandwidth |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name in sorted(groups):
        impls = groups[name]
        eager = seconds(impls["eager"]) if "eager" in impls else None
        comp = seconds(impls["compile"]) if "compile" in impls else None
        for impl in ("eager", "compile", "triton", "ext", "fused"):
            if impl not in impls:
                continue
            b = impls[impl]
            t = seconds(b)
            bw = ""
            if impl == "fused":
                impl = f"fused ({b['extra_info'].get('backend')})"
            if b["extra_info"].get("mode") == "fwd" and "fwd_bytes" in b["extra_info"]:
                gbs = b["extra_info"]["fwd_bytes"] / t / 1e9
                bw = f"{gbs:.1f} GB/s" + (f" ({100 * gbs * 1e9 / copy_bw:.0f}% of copy)" if copy_bw else "")
            lines.append(f"| {name} | {impl} | {t * 1e3:.3f} ms | "
                         f"{eager / t:.2f}x | {comp / t:.2f}x | {bw} |" if eager and comp else
                         f"| {name} | {impl} | {t * 1e3:.3f} ms | | | {bw} |")
    if evals:
        lines += ["", "| evaluation | median | valid queries |", "| --- | ---: | ---: |"]
        lines += [f"| {b['group']} | {seconds(b):.3f} s | {b['extra_info']['num_valid_queries']} |" for b in evals]
    if data:
        lines += ["", "| data pipeline | clips/s | vs torch DataLoader |", "| --- | ---: | ---: |"]
        rate = {(b["group"], b["extra_info"]["impl"]): b["extra_info"]["clips_per_s"] for b in data}
        for b in sorted(data, key=lambda b: (b["group"], b["extra_info"]["impl"] != "torch")):
            group, impl = b["group"], b["extra_info"]["impl"]
            torch_rate = rate.get((group, "torch"))
            vs = f"{rate[group, impl] / torch_rate:.2f}x" if torch_rate else ""
            lines.append(f"| {group}: {impl} | {rate[group, impl]:.0f} | {vs} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1]))
