"""Features with the test sampling, distances, CMC and mAP.

    python -m stafast.evaluate --dataset mars --root DIR --checkpoint OUT/checkpoint.pt [--all-frames] [--rerank]

Test sampling (Sec. 4.2): the first frame of each of the N chunks of a tracklet; --all-frames
averages the features of every clip of N consecutive frames instead.  Features are L2-normalised,
so the distance is 2 - 2 cos.  iLIDS-VID and PRID2011 are averaged over their 10 splits when
--split all is given.  --rerank also reports the figures after k-reciprocal re-ranking
(stafast.metrics.rerank), under keys prefixed rerank_.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from . import cli
from .checkpoint import load_model
from .data import DATASET_NAMES, PIPELINES, ClipPlan, build_loader, default_protocol, load_dataset, protocol_attrs
from .metrics import PROTOCOLS, chance_rank1, evaluate, ranks, rerank
from .progress import progress_bar


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module doc as written, and every flag's default in --help."""


@torch.no_grad()
def extract(model, tracklets, num_frames: int, height: int, width: int, batch_size: int = 16, all_frames: bool = False,
            pipeline: str = "auto", workers: int = 2, device: str = "cpu", amp_dtype=None, progress: bool = True):
    """(T, embed_dim) L2-normalised features of `tracklets`, with their pids and camids."""
    model.eval()
    plan = ClipPlan(tracklets, num_frames, "all" if all_frames else "test")
    loader = build_loader(plan, batch_size, height, width, pipeline=pipeline, workers=workers, device=device)
    feats, pids, camids = [], [], []
    for batch in progress_bar(loader, desc="features", enabled=progress):
        clips = batch["clips"].to(device, non_blocking=True)
        with torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype, enabled=amp_dtype is not None):
            emb = model(clips).embedding.float()
        if all_frames:  # one tracklet: average its clips
            emb = F.normalize(emb.mean(0, keepdim=True), dim=1)
            batch = {"pids": batch["pids"][:1], "camids": batch["camids"][:1]}
        feats.append(emb.cpu())
        pids.append(batch["pids"])
        camids.append(batch["camids"])
    return torch.cat(feats), torch.cat(pids).numpy(), torch.cat(camids).numpy()


def evaluate_dataset(model, dataset, num_frames: int, height: int, width: int, protocol: str = "official",
                     rerank: bool = False, **kwargs) -> dict:
    qf, qp, qc = extract(model, dataset.query, num_frames, height, width, **kwargs)
    gf, gp, gc = extract(model, dataset.gallery, num_frames, height, width, **kwargs)
    dist = (2 - 2 * qf @ gf.t()).clamp_(min=0)
    attrs = protocol_attrs(dataset, protocol)  # clothes ids etc., for the protocols that compare them
    result = evaluate(dist, qp, gp, qc, gc, protocol, **attrs)
    out = {**ranks(result), "mAP": result["mAP"], "num_valid_queries": result["num_valid_queries"],
           "protocol": protocol, "num_query": len(qp), "num_gallery": len(gp),
           "chance_rank1": chance_rank1(qp, gp, qc, gc, protocol, **attrs)}
    if rerank:
        out.update(reranked_metrics(qf, gf, dist, qp, gp, qc, gc, protocol, **attrs))
    return out


def reranked_metrics(qf, gf, dist, q_pids, g_pids, q_camids, g_camids, protocol: str, **attrs) -> dict:
    """The evaluation again after k-reciprocal re-ranking (stafast.metrics.rerank, the authors'
    defaults) of dist, with the query-query and gallery-gallery distances measured the same way
    (2 - 2 cos); keys prefixed "rerank_" (rerank_rank1, ..., rerank_mAP)."""
    result = evaluate(rerank(dist, (2 - 2 * qf @ qf.t()).clamp_(min=0), (2 - 2 * gf @ gf.t()).clamp_(min=0)),
                      q_pids, g_pids, q_camids, g_camids, protocol, **attrs)
    return {f"rerank_{k}": v for k, v in {**ranks(result), "mAP": result["mAP"]}.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    p.add_argument("--root", help="dataset root (synthetic: the generated tree; default: the training cache)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--protocol", choices=tuple(PROTOCOLS),
                   help="evaluation protocol (default: the dataset's leaderboard one, stafast.data.default_protocol)")
    p.add_argument("--split", default="0", help="iLIDS-VID / PRID2011 split 0..9, or 'all' for the mean of 10")
    p.add_argument("--all-frames", action="store_true", help="average all clips of N frames instead of first frames")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--pipeline", default="auto", choices=PIPELINES)
    p.add_argument("--output", help="write the metrics here as JSON")
    p.add_argument("--rerank", action="store_true",
                   help="also report CMC/mAP after k-reciprocal re-ranking (keys rerank_*)")
    a = p.parse_args(argv)
    a.protocol = a.protocol or default_protocol(a.dataset)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, state = load_model(a.checkpoint, device)
    cfg = state["config"]
    splits = range(10) if a.split == "all" else [int(a.split)]
    results = []
    for split in splits:
        ds = load_dataset(a.dataset, a.root or cfg.root, split=split, protocol=a.protocol)
        r = evaluate_dataset(model, ds, cfg.frames, cfg.height, cfg.width, a.protocol,
                             batch_size=a.batch_size, all_frames=a.all_frames, pipeline=a.pipeline,
                             workers=a.workers, device=device, rerank=a.rerank)
        results.append({**r, "split": split})
        print(json.dumps(results[-1]))
    summary = {k: float(np.mean([r[k] for r in results])) for k in ("rank1", "rank5", "rank10", "rank20", "mAP")
               if k in results[0]}
    summary.update({k: float(np.mean([r[k] for r in results])) for k in results[0] if k.startswith("rerank_")})
    summary.update(dataset=a.dataset, protocol=a.protocol, splits=list(splits), all_frames=a.all_frames,
                   per_split=results)
    if a.output:
        with open(a.output, "w") as f:
            json.dump(summary, f, indent=2)
    print(f"{a.dataset} ({a.protocol}): rank-1 {summary['rank1']:.3f}, mAP {summary['mAP']:.3f}")
    if a.rerank:
        print(f"  re-ranked: rank-1 {summary['rerank_rank1']:.3f}, mAP {summary['rerank_mAP']:.3f}")
    return summary


if __name__ == "__main__":
    cli.run(main, "stafast.evaluate")
