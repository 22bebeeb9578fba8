"""CMC and mAP for video re-ID, under the protocols of PROTOCOLS (see shared/data/README.md).

A protocol (`Protocol`) says, for each query, which gallery items stay in its ranking (keep) and
which of those are correct matches (good), from the pids, camids and optional extra attributes
(clothes ids, ...) of the query and of the gallery items; whether queries without a match are
skipped; and its AP rule (AP_RULES).  Adding a protocol is one entry of PROTOCOLS.

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

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .rerank import rerank  # noqa: F401  k-reciprocal re-ranking of a distance matrix, before evaluate()

Masks = Callable[[dict, dict], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol.

    masks(q, g) -> (keep, good): q and g are dicts of int64 tensors, "pids", "camids" and the
    protocol's `attrs`, that broadcast against each other: evaluate passes the queries' values as
    (queries, 1) columns and the gallery's as (1, gallery) rows; evaluate_features also passes
    equal-length 1-D tensors, one (query, gallery) pair per element.  So masks is written with
    elementwise operations only.  keep: the gallery item stays in the query's ranking; good: it
    is a correct match.  good implies keep and the query's pid (a correct match is the same
    person: evaluate_features looks for matches among the query's pid only); evaluate checks both.
    """
    name: str
    source: str             # where the definition comes from
    masks: Masks
    skip_unmatched: bool    # queries without a good match are left out (else they count with AP 0, no CMC hit)
    ap: str                 # a key of AP_RULES
    attrs: tuple[str, ...] = ()  # extra attributes masks reads (q_attrs / g_attrs keys of evaluate)


def _official_masks(q: dict, g: dict):
    same_id, same_cam = q["pids"] == g["pids"], q["camids"] == g["camids"]
    keep = ~((g["pids"] == -1) | (same_id & same_cam))
    return keep, same_id & ~same_cam & keep


def _toolbox_masks(q: dict, g: dict):
    same_id = q["pids"] == g["pids"]
    keep = ~(same_id & (q["camids"] == g["camids"]))
    return keep, same_id & keep


def _trapezoid(k: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The official package's AP term of a hit: the k-th hit at rank r (among kept items) adds
    (precision just before it + precision at it) / 2, to be divided by the number of good matches."""
    p_before = torch.where(r > 1, (k - 1) / (r - 1).clamp(min=1), torch.ones_like(k))
    return (p_before + k / r) / 2


def _non_interpolated(k: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Precision at the hit."""
    return k / r


AP_RULES = {"trapezoid": _trapezoid, "non-interpolated": _non_interpolated}

PROTOCOLS = {p.name: p for p in (
    Protocol("official", "MARS authors' evaluation package (Zheng et al., ECCV 2016), compute_AP.m",
             _official_masks, skip_unmatched=False, ap="trapezoid"),
    Protocol("toolbox", "common re-ID toolboxes (e.g. torchreid's eval_mars / eval_market1501)",
             _toolbox_masks, skip_unmatched=True, ap="non-interpolated"),
)}


def get_protocol(protocol: "str | Protocol") -> Protocol:
    """The Protocol named `protocol` (a Protocol passes through)."""
    if isinstance(protocol, Protocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {tuple(PROTOCOLS)}, got {protocol!r}")
    return PROTOCOLS[protocol]


def _items(pids, camids, attrs, protocol: Protocol, side: str) -> dict:
    """{"pids", "camids", *protocol.attrs}: 1-D int64 tensors of one length, checked."""
    attrs = dict(attrs or {})
    missing = [a for a in protocol.attrs if a not in attrs]
    if missing:
        raise ValueError(f"protocol {protocol.name!r} needs {side}_attrs with {missing} "
                         f"(e.g. {side}_attrs={{{missing[0]!r}: array of one id per {side} item}})")
    items = {k: torch.as_tensor(np.asarray(v)).long().ravel()
             for k, v in {"pids": pids, "camids": camids, **{a: attrs[a] for a in protocol.attrs}}.items()}
    lengths = {k: len(v) for k, v in items.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{side} ids must all have one length, got {lengths}")
    return items


def _rows(items: dict, s: slice) -> dict:
    """Queries s of `items` as (c, 1) columns, to broadcast against gallery rows."""
    return {k: v[s, None] for k, v in items.items()}


def _cols(items: dict) -> dict:
    return {k: v[None, :] for k, v in items.items()}


def block_masks(protocol: Protocol, q: dict, g: dict):
    """protocol.masks on a block, checked against the rules of Protocol (good implies keep and same pid)."""
    keep, good = (torch.broadcast_to(m, torch.broadcast_shapes(q["pids"].shape, g["pids"].shape))
                  for m in protocol.masks(q, g))
    if bool((good & ~(keep & (q["pids"] == g["pids"]))).any()):
        raise ValueError(f"protocol {protocol.name!r}: its masks mark as good an item that is not kept or has "
                         "another pid (a good match must be kept and be the query's pid)")
    return keep, good


def chance_rank1(q_pids, g_pids, q_camids, g_camids, protocol: str = "official", chunk: int = 256, *,
                 q_attrs=None, g_attrs=None) -> float:
    """Expected rank-1 of random distances: per counted query, good / kept gallery items."""
    p = get_protocol(protocol)
    q, g = _items(q_pids, q_camids, q_attrs, p, "q"), _items(g_pids, g_camids, g_attrs, p, "g")
    rates = []
    for s in range(0, len(q["pids"]), chunk):
        keep, good = block_masks(p, _rows(q, slice(s, s + chunk)), _cols(g))
        rate = good.sum(1).double() / keep.sum(1).clamp(min=1).double()
        rates.append(rate[good.any(1)] if p.skip_unmatched else rate)
    rates = torch.cat(rates) if rates else torch.zeros(0)
    return float(rates.mean()) if len(rates) else 0.0


class _Totals:
    """CMC counts, AP sum and the number of counted queries, summed over blocks of queries."""

    def __init__(self, protocol: Protocol, max_rank: int):
        self.protocol, self.max_rank = protocol, max_rank
        self.cmc, self.ap, self.valid = torch.zeros(max_rank, dtype=torch.float64), 0.0, 0

    def add(self, n_good: torch.Tensor, row: torch.Tensor, k: torch.Tensor, rank: torch.Tensor) -> None:
        """One block of queries: n_good (c,) good matches per query; for each hit, its query `row`
        in the block, k (1-based, among its query's hits) and rank (1-based, among kept items)."""
        n_good, row, k, rank = (t.cpu() for t in (n_good, row, k, rank))
        counted = n_good > 0 if self.protocol.skip_unmatched else torch.ones(len(n_good), dtype=torch.bool)
        term = AP_RULES[self.protocol.ap](k.double(), rank.double())
        ap = torch.zeros(len(n_good), dtype=torch.float64).index_add_(0, row, term) / n_good.clamp(min=1)
        first = torch.full((len(n_good),), self.max_rank + 1, dtype=torch.int64)
        first[row[k == 1]] = rank[k == 1].long()                                 # rank of the first hit
        self.cmc += ((first[:, None] <= torch.arange(1, self.max_rank + 1)) & counted[:, None]).sum(0).double()
        self.ap += float((ap * counted).sum())
        self.valid += int(counted.sum())

    def result(self) -> dict:
        if self.valid == 0:
            raise ValueError("no query has a match in the gallery under this protocol")
        return {"cmc": (self.cmc / self.valid).numpy(), "mAP": self.ap / self.valid, "num_valid_queries": self.valid,
                "protocol": self.protocol.name}


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, protocol: str = "official", max_rank: int = 50,
             chunk: int = 256, *, q_attrs: dict | None = None, g_attrs: dict | None = None) -> dict:
    """Returns {"cmc": float array (max_rank,), "mAP": float, "num_valid_queries": int, "protocol": str}.

    q_attrs / g_attrs: the extra attributes the protocol reads ({"clothes": ids, ...}, one per item)."""
    p = get_protocol(protocol)
    dist = torch.as_tensor(distmat)
    q, g = _items(q_pids, q_camids, q_attrs, p, "q"), _items(g_pids, g_camids, g_attrs, p, "g")
    nq, ng = dist.shape if dist.dim() == 2 else (None, None)
    if dist.dim() != 2 or len(q["pids"]) != nq or len(g["pids"]) != ng:
        raise ValueError(f"distmat must be (num_query, num_gallery) = ({len(q['pids'])}, {len(g['pids'])}); "
                         f"got distmat {tuple(dist.shape)}")
    totals = _Totals(p, min(max_rank, ng))
    gidx = torch.arange(ng, dtype=torch.int64)
    for s in range(0, nq, chunk):
        order = _stable_argsort(dist[s:s + chunk].float(), gidx)           # (c, G) gallery indices by rank
        keep, good = block_masks(p, _rows(q, slice(s, s + chunk)), _cols(g))
        keep, hits = torch.gather(keep, 1, order), torch.gather(good, 1, order)  # in rank order
        rank = torch.cumsum(keep, dim=1, dtype=torch.int32)                  # 1-based rank among kept items
        k = torch.cumsum(hits, dim=1, dtype=torch.int32)                     # hits so far
        totals.add(k[:, -1], hits.nonzero()[:, 0], k[hits], rank[hits])
    return totals.result()


def _stable_argsort(dist: torch.Tensor, gidx: torch.Tensor) -> torch.Tensor:
    """Row-wise argsort by distance, ties by gallery index: sorts one unique int64 key per item,
    (order-preserving bits of the float32 distance) << 32 | index, which is faster than a stable sort."""
    bits = dist.contiguous().view(torch.int32).long()
    bits = torch.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits)  # negative floats: reverse their bit order
    return (torch.sort((bits << 32) | gidx, dim=1).values & 0xFFFFFFFF)


def ranks(result: dict, which=(1, 5, 10, 20)) -> dict:
    """{"rank1": .., "rank5": .., ...} from an evaluate() result."""
    return {f"rank{r}": float(result["cmc"][r - 1]) for r in which if r <= len(result["cmc"])}
