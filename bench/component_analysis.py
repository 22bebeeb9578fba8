"""The paper's component analysis (Tables 1 and 2), reproduced on the occluded synthetic set.

    python bench/component_analysis.py --seeds 0 1 2 --epochs 15 --out bench/results/components
    (extra arguments after -- go to stafast.train, e.g. -- --loss oim)

Trains Baseline, SpaAtn, +Q', +Q, +MaxPool, +TemAtn and the full model with K in {1, 2, 4, 6, 8}
(K=6 is the +TemAtn row) for each seed with `python -m stafast.train --dataset synthetic`, then
writes components.md (mean +- standard deviation over seeds of rank-1 and mAP, official MARS
protocol) and components.json (every run).  The synthetic set and the small random-init
ResNet-18 are not the paper's setting: read the table as what these components do here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROWS = [("Baseline", ["--ablation", "baseline"]), ("SpaAtn", ["--ablation", "spaatn"]),
        ("SpaAtn+Q'", ["--ablation", "spaatn+q'"]), ("SpaAtn+Q", ["--ablation", "spaatn+q"]),
        ("SpaAtn+Q+MaxPool", ["--ablation", "spaatn+q+maxpool"]), ("SpaAtn+Q+TemAtn", ["--ablation", "spaatn+q+temattn"])]
HEADS = [1, 2, 4, 6, 8]
PAPER = {"Baseline": 73.4, "SpaAtn": 74.5, "SpaAtn+Q'": 74.0, "SpaAtn+Q": 77.0, "SpaAtn+Q+MaxPool": 76.8,
         "SpaAtn+Q+TemAtn": 77.1, "K=1": 76.0, "K=2": 75.7, "K=4": 77.2, "K=6": 77.1, "K=8": 76.7}  # MARS rank-1


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--out", default="bench/results/components")
    p.add_argument("--configs", nargs="+", metavar="NAME", help="only these rows (e.g. SpaAtn+Q K=2); default all")
    a = p.parse_args(argv)
    from stafast import train
    os.makedirs(a.out, exist_ok=True)
    configs = ROWS + [(f"K={k}", ["--ablation", "spaatn+q+temattn", "--heads", str(k)]) for k in HEADS if k != 6]
    if a.configs:
        unknown = set(a.configs) - {name for name, _ in configs}
        if unknown:
            p.error(f"unknown --configs {sorted(unknown)}; expected names from {[name for name, _ in configs]}")
        configs = [(name, flags) for name, flags in configs if name in a.configs]
    runs = []
    path = os.path.join(a.out, "components.json")
    for name, flags in configs:
        for seed in a.seeds:
            t0 = time.time()
            result = train.main(["--dataset", "synthetic", "--output", os.path.join(a.out, "runs", f"{name}-s{seed}"),
                                 "--epochs", str(a.epochs), "--seed", str(seed), "--no-progress", *flags, *extra])
            m = result["metrics"][-1]
            runs.append({"config": name, "seed": seed, "rank1": m["rank1"], "mAP": m["mAP"],
                         "chance_rank1": m["chance_rank1"], "seconds": time.time() - t0, "flags": flags + extra})
            print(f"{name} seed {seed}: rank-1 {m['rank1']:.3f} mAP {m['mAP']:.3f}", file=sys.stderr)
            with open(path, "w") as f:
                json.dump({"epochs": a.epochs, "seeds": a.seeds, "extra": extra, "runs": runs}, f, indent=2)
    rows = {name: [r for r in runs if r["config"] == name] for name, _ in configs}
    if "SpaAtn+Q+TemAtn" in rows:
        rows["K=6"] = rows["SpaAtn+Q+TemAtn"]
    lines = [f"Synthetic MARS layout (occluded), ResNet-18 from random weights, {a.epochs} epochs, seeds {a.seeds}, "
             f"official protocol; chance rank-1 {runs[0]['chance_rank1']:.3f}. Extra flags: {' '.join(extra) or 'none'}.",
             "", "| model | rank-1 (mean +- sd) | mAP (mean +- sd) | paper, MARS rank-1 |", "| --- | ---: | ---: | ---: |"]
    for name in [n for n, _ in ROWS] + [f"K={k}" for k in HEADS]:
        if not rows.get(name):  # not among --configs
            continue
        r1 = np.array([r["rank1"] for r in rows[name]])
        mp = np.array([r["mAP"] for r in rows[name]])
        lines.append(f"| {name} | {r1.mean():.3f} +- {r1.std():.3f} | {mp.mean():.3f} +- {mp.std():.3f} | {PAPER[name]} |")
    with open(os.path.join(a.out, "components.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
