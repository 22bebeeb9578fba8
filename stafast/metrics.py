"""CMC and mAP for video re-ID, under the two protocols in use (see shared/data/README.md).

official (the MARS authors' MATLAB package): for each query, junk = gallery items with pid -1,
    or with the query's pid AND camera (this includes the query itself when the gallery holds
    it); good = the query's pid in another camera; distractors (pid 0) and everything else are
    negatives.  Junk is removed from the ranking.  AP is trapezoidal: at each ranked item
    ap += (r - r_old) * (p_old + p) / 2, with p_old starting at 1.  Every query counts; one
    without a good match scores AP 0 and no CMC hit.
toolbox (common re-ID toolboxes): gallery items with the query's pid and camera are removed;
    queries left without a match are skipped; AP is non-interpolated (mean precision at hits).

Ties in distance rank by gallery order (a stable sort).  Queries are processed in chunks, all
vectorised, so a 1,980 x 12,180 matrix (MARS) or larger fits in memory.
"""
from __future__ import annotations

import numpy as np
import torch

from .rerank import rerank  # noqa: F401  k-reciprocal re-ranking of a distance matrix, before evaluate()

PROTOCOLS = ("official", "toolbox")


def protocol_masks(q_pids, q_camids, g_pids, g_camids, protocol: str):
    """(keep, good), each (queries, gallery): which gallery items stay in a query's ranking, and
    which of those are correct matches, under `protocol` (the definitions in the module doc)."""
    same_id = g_pids[None, :] == q_pids[:, None]
    same_cam = g_camids[None, :] == q_camids[:, None]
    if protocol == "official":
        keep = ~((g_pids[None, :] == -1) | (same_id & same_cam))
        return keep, same_id & ~same_cam & keep
    keep = ~(same_id & same_cam)
    return keep, same_id & keep


def chance_rank1(q_pids, g_pids, q_camids, g_camids, protocol: str = "official") -> float:
    """Expected rank-1 of random distances: per counted query, good / kept gallery items."""
    q_pids, g_pids, q_camids, g_camids = (torch.as_tensor(np.asarray(a)).long().ravel()
                                          for a in (q_pids, g_pids, q_camids, g_camids))
    keep, good = protocol_masks(q_pids, q_camids, g_pids, g_camids, protocol)
    rate = good.sum(1).double() / keep.sum(1).clamp(min=1).double()
    counted = good.any(1) if protocol == "toolbox" else torch.ones_like(rate, dtype=torch.bool)
    return float(rate[counted].mean()) if counted.any() else 0.0


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, protocol: str = "official", max_rank: int = 50,
             chunk: int = 256) -> dict:
    """Returns {"cmc": float array (max_rank,), "mAP": float, "num_valid_queries": int, "protocol": str}."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    dist = torch.as_tensor(distmat)
    q_pids, g_pids, q_camids, g_camids = (torch.as_tensor(np.asarray(a)).long().ravel()
                                          for a in (q_pids, g_pids, q_camids, g_camids))
    nq, ng = dist.shape if dist.dim() == 2 else (None, None)
    if dist.dim() != 2 or len(q_pids) != nq or len(q_camids) != nq or len(g_pids) != ng or len(g_camids) != ng:
        raise ValueError(f"distmat must be (num_query, num_gallery) = ({len(q_pids)}, {len(g_pids)}) with matching "
                         f"camera ids; got distmat {tuple(dist.shape)}, q_camids {len(q_camids)}, g_camids {len(g_camids)}")
    max_rank = min(max_rank, ng)
    cmc_sum = torch.zeros(max_rank, dtype=torch.float64)
    ap_sum, valid = 0.0, 0
    gidx = torch.arange(ng, dtype=torch.int64)
    for s in range(0, nq, chunk):
        order = _stable_argsort(dist[s:s + chunk].float(), gidx)           # (c, G) gallery indices by rank
        keep, good = protocol_masks(q_pids[s:s + chunk], q_camids[s:s + chunk], g_pids, g_camids, protocol)
        keep, hits = torch.gather(keep, 1, order), torch.gather(good, 1, order)  # in rank order
        rank = torch.cumsum(keep, dim=1, dtype=torch.int32)                  # 1-based rank among kept items
        k = torch.cumsum(hits, dim=1, dtype=torch.int32)                     # hits so far
        n_good = k[:, -1]
        has = n_good > 0
        rank_h, k_h = rank[hits].double(), k[hits].double()                  # at the hits only
        row = hits.nonzero()[:, 0]
        if protocol == "official":
            # trapezoid at each hit: (precision before it + precision at it) / 2, times 1 / n_good
            p_before = torch.where(rank_h > 1, (k_h - 1) / (rank_h - 1).clamp(min=1), torch.ones_like(k_h))
            term = (p_before + k_h / rank_h) / 2
            counted = torch.ones_like(has)
        else:
            term = k_h / rank_h
            counted = has
        ap = torch.zeros(len(has), dtype=torch.float64).index_add_(0, row, term) / n_good.clamp(min=1)
        first = torch.full((len(has),), ng + 1, dtype=torch.int32).scatter_reduce_(
            0, row, rank[hits], reduce="amin")                              # rank of the first hit
        cmc = (first[:, None] <= torch.arange(1, max_rank + 1)) & has[:, None]
        cmc_sum += (cmc & counted[:, None]).sum(0).double()
        ap_sum += float((ap * counted).sum())
        valid += int(counted.sum())
    if valid == 0:
        raise ValueError("no query has a match in the gallery under this protocol")
    return {"cmc": (cmc_sum / valid).numpy(), "mAP": ap_sum / valid, "num_valid_queries": valid, "protocol": protocol}


def _stable_argsort(dist: torch.Tensor, gidx: torch.Tensor) -> torch.Tensor:
    """Row-wise argsort by distance, ties by gallery index: sorts one unique int64 key per item,
    (order-preserving bits of the float32 distance) << 32 | index, which is faster than a stable sort."""
    bits = dist.contiguous().view(torch.int32).long()
    bits = torch.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits)  # negative floats: reverse their bit order
    return (torch.sort((bits << 32) | gidx, dim=1).values & 0xFFFFFFFF)


def ranks(result: dict, which=(1, 5, 10, 20)) -> dict:
    """{"rank1": .., "rank5": .., ...} from an evaluate() result."""
    return {f"rank{r}": float(result["cmc"][r - 1]) for r in which if r <= len(result["cmc"])}
