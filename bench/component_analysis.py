"""The paper's component analysis (Tables 1 and 2) on the synthetic set, and the strong baseline.

    nice -n 15 python bench/component_analysis.py --seeds 0 1 2 --out bench/results/components-g2
    python bench/component_analysis.py --configs SpaAtn+Q "SpaAtn+Q, authors' Q" --out DIR
    (extra arguments after -- go to every stafast.train run, e.g. -- --epochs 10)

Trains every Table 1 row (Baseline, SpaAtn, +Q', +Q, +MaxPool, +TemAtn), Table 2's K in
{1, 2, 4, 6, 8} (K=6 is the +TemAtn row), the full model with the authors' released form of the
diversity term beside ours, and `--recipe strong`, for each seed, with `python -m stafast.train
--dataset synthetic` (its defaults: the set and the recipe of `make demo`).  Writes
components.json (every run: rank-1, mAP, final train losses, wall and CPU seconds) after each
run, and components.md: mean and sample standard deviation over the seeds, and for each paper
claim the per-seed paired difference.  A run already in components.json (same config, seed,
flags and synthetic set) is not trained again, so an interrupted analysis continues where it stopped.  The
synthetic set and a random-init ResNet-18 are not the paper's setting: the table says what these
components do here.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

TABLE1 = [("Baseline", ["--ablation", "baseline"]), ("SpaAtn", ["--ablation", "spaatn"]),
          ("SpaAtn+Q'", ["--ablation", "spaatn+q'"]), ("SpaAtn+Q", ["--ablation", "spaatn+q"]),
          ("SpaAtn+Q+MaxPool", ["--ablation", "spaatn+q+maxpool"]),
          ("SpaAtn+Q+TemAtn", ["--ablation", "spaatn+q+temattn"])]
HEADS = [1, 2, 4, 6, 8]
EXTRA = [("SpaAtn+Q, authors' Q", ["--ablation", "spaatn+q", "--diversity-form", "authors"]),
         ("SpaAtn+Q+TemAtn, authors' Q", ["--ablation", "spaatn+q+temattn", "--diversity-form", "authors"]),
         ("strong recipe", ["--recipe", "strong"])]
CONFIGS = TABLE1 + [(f"K={k}", ["--ablation", "spaatn+q+temattn", "--heads", str(k)]) for k in HEADS if k != 6] + EXTRA
# The order the runs are made in: the full model first (the `make demo` configuration), then what the
# paper's claims compare, so that an analysis stopped early has whole rows for them.
PRIORITY = ["SpaAtn+Q+TemAtn", "Baseline", "SpaAtn+Q+TemAtn, authors' Q", "SpaAtn", "SpaAtn+Q", "SpaAtn+Q'",
            "SpaAtn+Q+MaxPool", "strong recipe", "K=1", "K=2", "K=4", "K=8", "SpaAtn+Q, authors' Q"]
ALIASES = {"K=6": "SpaAtn+Q+TemAtn"}
PAPER = {"Baseline": 73.4, "SpaAtn": 74.5, "SpaAtn+Q'": 74.0, "SpaAtn+Q": 77.0, "SpaAtn+Q+MaxPool": 76.8,
         "SpaAtn+Q+TemAtn": 77.1, "K=1": 76.0, "K=2": 75.7, "K=4": 77.2, "K=6": 77.1, "K=8": 76.7}  # MARS rank-1
CLAIMS = [("the full model > Baseline", "SpaAtn+Q+TemAtn", "Baseline"), ("SpaAtn > Baseline", "SpaAtn", "Baseline"), ("Q > Q'", "SpaAtn+Q", "SpaAtn+Q'"),
          ("SpaAtn+Q > SpaAtn", "SpaAtn+Q", "SpaAtn"),
          ("temporal attention > average pooling", "SpaAtn+Q+TemAtn", "SpaAtn+Q"),
          ("temporal attention > max pooling", "SpaAtn+Q+TemAtn", "SpaAtn+Q+MaxPool"),
          ("authors' Q vs ours, SpaAtn+Q", "SpaAtn+Q, authors' Q", "SpaAtn+Q"),
          ("authors' Q vs ours, full model", "SpaAtn+Q+TemAtn, authors' Q", "SpaAtn+Q+TemAtn"),
          ("strong recipe vs the paper's", "strong recipe", "SpaAtn+Q+TemAtn")]


def cpu_seconds() -> float:
    """User + system CPU of this process and of its finished children (the data workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def synthetic_set() -> str:
    """The cache name of --dataset synthetic's set: its generator version and parameters."""
    from stafast.data import synth
    return synth.cache_name(synth.SYNTHETIC_SET, 0)


def train_once(name: str, flags: list[str], seed: int, out: str) -> dict:
    from stafast import train
    t0, c0 = time.time(), cpu_seconds()
    result = train.main(["--dataset", "synthetic", "--output", out, "--seed", str(seed), "--no-progress", *flags])
    history = result["metrics"]
    last = history[-1]
    return {"config": name, "seed": seed, "flags": flags, "set": synthetic_set(), "rank1": last["rank1"],
            "mAP": last["mAP"], "chance_rank1": last["chance_rank1"], "num_query": last.get("num_query"),
            "train_first": {k: v for k, v in history[0].items() if k.startswith("train_")},
            "train_last": {k: v for k, v in last.items() if k.startswith("train_")},
            "seconds": time.time() - t0, "cpu_seconds": cpu_seconds() - c0}


def summary(runs: list[dict], names: list[str]) -> dict:
    """name -> {seed: run} for the configs that have runs (aliases included)."""
    by = {}
    for name in names:
        source = ALIASES.get(name, name)
        found = {r["seed"]: r for r in runs if r["config"] == source}
        if found:
            by[name] = found
    return by


def mean_sd(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} +- {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f} (one seed)"


def table(runs: list[dict], extra: list[str]) -> str:
    names = [n for n, _ in TABLE1] + [f"K={k}" for k in HEADS] + [n for n, _ in EXTRA]
    by = summary(runs, names)
    first = runs[0]
    sets = sorted({str(r.get("set")) for r in runs})
    lines = [f"Synthetic MARS layout (`--dataset synthetic`, set {', '.join(sets)}), official protocol, "
             f"{first.get('num_query')} queries, chance rank-1 {first['chance_rank1']:.3f}; seeds: the runs in each row "
             f"(only rows with runs are listed); sd: sample standard deviation over the seeds. "
             f"Extra flags: {' '.join(extra) or 'none'}.", "",
             "| model | seeds | rank-1 (mean +- sd) | mAP (mean +- sd) | paper, MARS rank-1 | CPU s per run |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, seeds in by.items():
        rs = list(seeds.values())
        lines.append(f"| {name} | {len(rs)} | {mean_sd([r['rank1'] for r in rs])} | {mean_sd([r['mAP'] for r in rs])} | "
                     f"{PAPER.get(name, '')} | {np.mean([r['cpu_seconds'] for r in rs]):.0f} |")
    claims = []
    for claim, a, b in CLAIMS:
        seeds = sorted(set(by.get(a, ())) & set(by.get(b, ())))
        if seeds:
            d1 = [by[a][s]["rank1"] - by[b][s]["rank1"] for s in seeds]
            dm = [by[a][s]["mAP"] - by[b][s]["mAP"] for s in seeds]
            claims.append(f"| {claim} ({a} - {b}) | {mean_sd(d1)} | {mean_sd(dm)} | {len(seeds)} |")
    if claims:
        lines += ["", "Paired differences (the same seeds), rank-1 and mAP: mean +- sd of the per-seed differences.",
                  "", "| claim | A - B, rank-1 | A - B, mAP | seeds |", "| --- | ---: | ---: | ---: |", *claims]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="bench/results/components-g2")  # the set of synth.GENERATOR_VERSION 2
    p.add_argument("--configs", nargs="+", metavar="NAME", help="only these rows (e.g. SpaAtn+Q K=2); default all")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each run's checkpoint.pt (by default removed once the run is recorded: ~100 MB each)")
    a = p.parse_args(argv)
    configs = sorted(CONFIGS, key=lambda c: PRIORITY.index(c[0]))
    if a.configs:
        known = [name for name, _ in CONFIGS]
        unknown = set(a.configs) - set(known)
        if unknown:
            p.error(f"unknown --configs {sorted(unknown)}; expected names from {known}")
        configs = [(name, flags) for name, flags in CONFIGS if name in a.configs]
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "components.json")
    runs = json.load(open(path))["runs"] if os.path.isfile(path) else []
    for name, flags in configs:
        for seed in a.seeds:
            if any(r["config"] == name and r["seed"] == seed and r["flags"] == flags + extra and
                   r.get("set") == synthetic_set() for r in runs):
                continue  # done, on this set
            run_dir = os.path.join(a.out, "runs", f"{name}-s{seed}")
            run = train_once(name, flags + extra, seed, run_dir)
            if not a.keep_checkpoints:
                os.remove(os.path.join(run_dir, "checkpoint.pt"))  # metrics.json and tb/ stay
            runs = [r for r in runs if not (r["config"] == name and r["seed"] == seed)] + [run]
            print(f"{name} seed {seed}: rank-1 {run['rank1']:.3f} mAP {run['mAP']:.3f} "
                  f"({run['seconds']:.0f} s, {run['cpu_seconds']:.0f} CPU s)", file=sys.stderr)
            with open(path + ".tmp", "w") as f:
                json.dump({"seeds": sorted({r["seed"] for r in runs}), "extra": extra, "runs": runs}, f, indent=2)
            os.replace(path + ".tmp", path)
    text = table(runs, extra)
    with open(os.path.join(a.out, "components.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
