"""Features with the test sampling, distances, CMC and mAP.

    python -m stafast.evaluate --dataset mars --root DIR --checkpoint OUT/checkpoint.pt [--all-frames] [--rerank]
    python -m stafast.evaluate --features F.pt          # a features file of python -m stafast.embed: no model
    torchrun --nproc_per_node G -m stafast.evaluate --dataset ... --checkpoint ...     # G processes

Test sampling (Sec. 4.2): the first frame of each of the N chunks of a tracklet; --all-frames
averages the features of every clip of N consecutive frames instead.  Features are L2-normalised,
so the distance is 2 - 2 cos; CMC and mAP are computed block by block from the features
(stafast.metrics.evaluate_features: exact, at any gallery size).  iLIDS-VID and PRID2011 are
averaged over their 10 splits when --split all is given, each tracklet embedded once.  Under
torchrun every process embeds a contiguous share of the tracklets, the features are gathered in
order and process 0 evaluates: the same figures as one process.  On a GPU the model runs
channels_last under autocast (--amp).  --rerank also reports the figures after k-reciprocal
re-ranking (stafast.metrics.rerank, on the dense matrices: small galleries), under keys
prefixed rerank_.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from . import cli
from .checkpoint import load_model
from .cli import option
from .data import DATASET_NAMES, PIPELINES, ClipPlan, build_loader, default_protocol, load_dataset
from .distributed import gather_rows, setup_distributed, shard, world
from .features import Features, FeaturesFileError
from .metrics import PROTOCOLS, chance_rank1, evaluate, evaluate_features, feature_distances, get_protocol, ranks, rerank
from .progress import progress_bar

MODULE = "stafast.evaluate"
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def amp_dtype(name: str, device: torch.device):
    """The autocast dtype of --amp `name` on `device`: none on the CPU (fp32)."""
    return AMP[name] if device.type == "cuda" else None


def extract(model, tracklets, num_frames: int, height: int, width: int, batch_size: int = 16, all_frames: bool = False,
            pipeline: str = "auto", workers: int = 2, device: str = "cpu", amp_dtype="auto", progress: bool = True,
            distributed: bool = False):
    """(T, embed_dim) L2-normalised features of `tracklets`, with their pids and camids.
    amp_dtype: the autocast dtype, "auto": bfloat16 on a GPU, none on the CPU; on a GPU the model
    runs channels_last.  distributed: each process of the torch.distributed group embeds a
    contiguous share of the tracklets (of about equal frame counts with all_frames) and every
    process gets all the rows, in order."""
    rank, size = world() if distributed else (0, 1)
    share = shard([len(t) if all_frames else 1 for t in tracklets], rank, size)
    feats = _embed(model, tracklets[share], num_frames, height, width, batch_size, all_frames, pipeline, workers,
                   device, amp_dtype, progress)
    if size > 1:
        feats = gather_rows(feats)
    return feats, np.array([t.pid for t in tracklets]), np.array([t.camid for t in tracklets])


@torch.no_grad()
def _embed(model, tracklets, num_frames, height, width, batch_size, all_frames, pipeline, workers, device, amp_dtype,
           progress) -> torch.Tensor:
    if not tracklets:  # a process's empty share
        return torch.zeros(0, 0)
    dev = torch.device(device)
    if amp_dtype == "auto":
        amp_dtype = torch.bfloat16 if dev.type == "cuda" else None
    model.eval()
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    plan = ClipPlan(tracklets, num_frames, "all" if all_frames else "test")
    loader = build_loader(plan, batch_size, height, width, pipeline=pipeline, workers=workers, device=device)
    feats = []
    for batch in progress_bar(loader, desc="features", enabled=progress):
        clips = batch["clips"].to(device, non_blocking=True)
        with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            emb = model(clips).embedding.float()
        if all_frames:  # one tracklet: average its clips
            emb = F.normalize(emb.mean(0, keepdim=True), dim=1)
        feats.append(emb.cpu())
    return torch.cat(feats)


def tracklet_path(t) -> str:
    """What names a tracklet in a features file: its video file, or its first frame."""
    return getattr(t, "path", None) or t.frames[0]


def tracklet_attrs(tracklets) -> dict:
    """{name: (T,) int64} of the per-tracklet labels (clothes, ...) that every tracklet carries."""
    labels = [getattr(t, "attrs", None) or {} for t in tracklets]
    names = set.intersection(*(set(a) for a in labels)) if labels else set()
    return {n: torch.tensor([a[n] for a in labels], dtype=torch.int64) for n in sorted(names)}


def dataset_features(model, datasets: dict, num_frames: int, height: int, width: int, meta: dict | None = None,
                     **kwargs) -> Features:
    """Features of the query and gallery tracklets of `datasets` ({split: dataset}), every distinct
    tracklet embedded once (the splits of iLIDS-VID / PRID2011, MARS queries in its gallery).  The
    gallery rows come first, so that a split's gallery is a contiguous range where it can be."""
    rows: dict = {}
    for ds in datasets.values():
        for t in (*ds.gallery, *ds.query):
            rows.setdefault(t, len(rows))
    tracklets = list(rows)
    feats, pids, camids = extract(model, tracklets, num_frames, height, width, **kwargs)
    splits = {split: {part: torch.tensor([rows[t] for t in getattr(ds, part)], dtype=torch.int64)
                      for part in ("query", "gallery")} for split, ds in datasets.items()}
    return Features(feats, torch.from_numpy(pids), torch.from_numpy(camids), [tracklet_path(t) for t in tracklets],
                    tracklet_attrs(tracklets), splits, meta or {})


def evaluate_split(features: Features, split, protocol: str, rerank: bool = False) -> dict:
    """rank-1/5/10/20, mAP, ... of the query and gallery of `split` in `features` under `protocol`."""
    q, g = features.part(split, "query"), features.part(split, "gallery")
    names = get_protocol(protocol).attrs
    attrs = {"q_attrs": {n: q.attrs[n] for n in names if n in q.attrs},
             "g_attrs": {n: g.attrs[n] for n in names if n in g.attrs}}
    ids = (q.pids, g.pids, q.camids, g.camids, protocol)
    result = evaluate_features(q.features, g.features, *ids, **attrs)
    out = {**ranks(result), "mAP": result["mAP"], "num_valid_queries": result["num_valid_queries"],
           "protocol": protocol, "num_query": len(q), "num_gallery": len(g), "chance_rank1": chance_rank1(*ids, **attrs)}
    if rerank:
        out.update(reranked_metrics(q.features, g.features, *ids, **attrs))
    return out


def evaluate_dataset(model, dataset, num_frames: int, height: int, width: int, protocol: str = "official",
                     rerank: bool = False, **kwargs) -> dict:
    """Embed the query and gallery of `dataset` (extract's keywords) and evaluate them."""
    return evaluate_split(dataset_features(model, {0: dataset}, num_frames, height, width, **kwargs), 0, protocol,
                          rerank)


def reranked_metrics(qf, gf, q_pids, g_pids, q_camids, g_camids, protocol: str, **attrs) -> dict:
    """The evaluation again after k-reciprocal re-ranking (stafast.metrics.rerank, the authors'
    defaults) of the query-gallery distances, with the query-query and gallery-gallery distances
    measured the same way (2 - 2 cos); keys prefixed "rerank_" (rerank_rank1, ..., rerank_mAP)."""
    result = evaluate(rerank(feature_distances(qf, gf), feature_distances(qf, qf), feature_distances(gf, gf)),
                      q_pids, g_pids, q_camids, g_camids, protocol, **attrs)
    return {f"rerank_{k}": v for k, v in {**ranks(result), "mAP": result["mAP"]}.items()}


def features_from_model(a: DatasetOptions, device: torch.device) -> Features:
    """The features of --dataset's --split(s), embedded with a.checkpoint (shared out under torchrun)."""
    model, state = load_model(a.checkpoint, str(device))
    cfg = state["config"]
    splits = range(10) if a.split == "all" else [a.split or 0]
    datasets = {s: load_dataset(a.dataset, a.root or cfg.root, split=s, protocol=a.protocol) for s in splits}
    meta = {"dataset": a.dataset, "protocol": a.protocol, "checkpoint": a.checkpoint, "all_frames": a.all_frames,
            "frames": cfg.frames, "height": cfg.height, "width": cfg.width}
    gallery_protocol = getattr(next(iter(datasets.values())), "protocol", None)
    if gallery_protocol is not None:  # the dataset built its gallery for this protocol (MARS)
        meta["gallery_protocol"] = gallery_protocol
    return dataset_features(model, datasets, cfg.frames, cfg.height, cfg.width, meta, batch_size=a.batch_size,
                            all_frames=a.all_frames, pipeline=a.pipeline, workers=a.workers, device=str(device),
                            amp_dtype=amp_dtype(a.amp, device), distributed=True)


@dataclass(kw_only=True)
class DatasetOptions:
    """How a dataset is embedded with a checkpoint (evaluate and embed)."""
    dataset: str | None = option(None, "embed this dataset's query and gallery", "dataset", DATASET_NAMES)
    root: str | None = option(None, "its root (synthetic: the generated tree; default: the checkpoint's)", "dataset")
    protocol: str | None = option(None, "evaluation protocol (default: the dataset's leaderboard one, "
                                  "stafast.data.default_protocol; with --features, the file's)", "dataset", PROTOCOLS)
    split: int | Literal["all"] | None = option(None, "iLIDS-VID / PRID2011 split 0..9, or all: the 10 splits, each "
                                                "tracklet embedded once (default: 0; with --features, the file's "
                                                "splits)", "dataset")
    all_frames: bool = option(False, "average all clips of N frames instead of the first frames", "embedding")
    batch_size: int = option(16, "clips per batch", "embedding")
    workers: int = option(2, "loader workers", "embedding")
    pipeline: str = option("auto", "clip pipeline", "embedding", PIPELINES)
    amp: str = option("bf16", "autocast dtype on a GPU (the CPU runs fp32)", "embedding", AMP)


@dataclass(kw_only=True)
class EvaluateConfig(DatasetOptions):
    features: str | None = option(None, "evaluate this features file (python -m stafast.embed) instead of a model")
    checkpoint: str | None = option(None, "a stafast.train checkpoint.pt (with --dataset)")
    output: str | None = option(None, "write the metrics here as JSON")
    rerank: bool = option(False, "also report CMC/mAP after k-reciprocal re-ranking (keys rerank_*)")

    def __post_init__(self):
        if bool(self.features) == bool(self.checkpoint and self.dataset):
            raise ValueError("give --features F, or --checkpoint and --dataset (one of them)")
        if self.dataset:
            self.protocol = self.protocol or default_protocol(self.dataset)


def main(argv=None) -> dict | None:
    a = cli.parse(EvaluateConfig, argv, module=MODULE, description=__doc__)
    if a.features:
        feats = Features.load(a.features)
        protocol, splits, rank = file_protocol(a, feats), file_splits(a, feats), 0
    else:
        rank, _, device = setup_distributed()
        feats, protocol = features_from_model(a, device), a.protocol
        splits = sorted(feats.splits)
    try:
        return None if rank else report(a, feats, protocol, splits)  # process 0 evaluates
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def file_protocol(a: EvaluateConfig, feats: Features) -> str:
    """--protocol, or the one the file was embedded for; refused where the file's galleries were built
    for another one (MARS official / toolbox galleries differ)."""
    protocol = a.protocol or feats.meta["protocol"]
    built_for = feats.meta.get("gallery_protocol")
    if built_for is not None and built_for != protocol:
        raise FeaturesFileError(f"{a.features}: its galleries were built for protocol {built_for!r} (the "
                                f"{feats.meta.get('dataset')} gallery depends on it); embed again with --protocol "
                                f"{protocol}")
    return protocol


def file_splits(a: EvaluateConfig, feats: Features) -> list:
    """--split's splits of the file (all of them by default)."""
    if a.split in (None, "all"):
        splits = sorted(feats.splits)
    else:
        splits = [a.split]
    if not splits or any(s not in feats.splits for s in splits):
        raise FeaturesFileError(f"{a.features} holds splits {sorted(feats.splits)}, not {a.split or 'any'}")
    return splits


def report(a, feats: Features, protocol: str, splits: list) -> dict:
    """Evaluate `splits`, print one JSON line each and the summary (their means); write it to --output."""
    results = []
    for split in splits:
        results.append({**evaluate_split(feats, split, protocol, a.rerank), "split": split})
        print(json.dumps(results[-1]))
    summary = {k: float(np.mean([r[k] for r in results])) for k in ("rank1", "rank5", "rank10", "rank20", "mAP")
               if k in results[0]}
    summary.update({k: float(np.mean([r[k] for r in results])) for k in results[0] if k.startswith("rerank_")})
    dataset = feats.meta.get("dataset", a.dataset)
    summary.update(dataset=dataset, protocol=protocol, splits=list(splits),
                   all_frames=bool(feats.meta.get("all_frames", a.all_frames)), per_split=results)
    if a.output:
        with open(a.output, "w") as f:
            json.dump(summary, f, indent=2)
    print(f"{dataset} ({protocol}): rank-1 {summary['rank1']:.3f}, mAP {summary['mAP']:.3f}")
    if a.rerank:
        print(f"  re-ranked: rank-1 {summary['rerank_rank1']:.3f}, mAP {summary['rerank_mAP']:.3f}")
    return summary


if __name__ == "__main__":
    cli.run(main, MODULE)
