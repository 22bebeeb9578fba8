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
gallery+query (MARS as AP3D, TKP, SINet evaluate it): the toolbox rule on a gallery that holds
    the queries in front of the toolbox gallery (1,980 + 9,330 = 11,310 tracklets; the dataset
    builds that gallery, stafast.data.MARS).  A query's other-camera queries are now matches, so
    every MARS query counts.
general, same-clothes, clothes-changing (CCVID, MEVID; Simple-CCReID's and MEVID's evaluate and
    evaluate_with_clothes): general is the toolbox rule; same-clothes keeps as matches only the
    query's person in its clothes (another camera) and removes the person in other clothes;
    clothes-changing the reverse: matches wear other clothes, the person in the query's clothes
    is removed.  Both also remove the query's person in the query's camera.
same-location, changed-location, same-scale, changed-scale (MEVID's evaluate_with_locations and
    evaluate_with_scales): the same split by indoor/outdoor location and by box scale.

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


def _split_by(attr: str, same: bool) -> Masks:
    """The toolbox rule restricted to the matches whose `attr` equals the query's (same=True) or
    differs from it: the query's person with the other kind of `attr` is removed from the ranking,
    as evaluate_with_clothes (mode SC / CC) of Simple-CCReID and MEVID's _locations / _scales do."""
    def masks(q: dict, g: dict):
        same_id, same_attr = q["pids"] == g["pids"], q[attr] == g[attr]
        keep = ~(same_id & ((q["camids"] == g["camids"]) | (same_attr != same)))
        return keep, same_id & keep
    return masks


def _trapezoid(k: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The official package's AP term of a hit: the k-th hit at rank r (among kept items) adds
    (precision just before it + precision at it) / 2, to be divided by the number of good matches."""
    p_before = torch.where(r > 1, (k - 1) / (r - 1).clamp(min=1), torch.ones_like(k))
    return (p_before + k / r) / 2


def _non_interpolated(k: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Precision at the hit."""
    return k / r


AP_RULES = {"trapezoid": _trapezoid, "non-interpolated": _non_interpolated}

_MEVID = "Kitware/MEVID (Davila et al., WACV 2023) CAL/tools/eval_metrics.py"
_CC = f"Simple-CCReID (Gu et al., CVPR 2022) tools/eval_metrics.py and {_MEVID}"

PROTOCOLS = {p.name: p for p in (
    Protocol("official", "MARS authors' evaluation package (Zheng et al., ECCV 2016), compute_AP.m",
             _official_masks, skip_unmatched=False, ap="trapezoid"),
    Protocol("toolbox", "common re-ID toolboxes (e.g. torchreid's eval_mars / eval_market1501)",
             _toolbox_masks, skip_unmatched=True, ap="non-interpolated"),
    Protocol("gallery+query", "AP3D / TKP / SINet test(): MARS queries concatenated in front of the toolbox "
             "gallery, then their evaluate (the toolbox rule)", _toolbox_masks, skip_unmatched=True,
             ap="non-interpolated"),
    Protocol("general", f"{_CC} evaluate", _toolbox_masks, skip_unmatched=True, ap="non-interpolated"),
    *(Protocol(name, source, _split_by(attr, same), skip_unmatched=True, ap="non-interpolated", attrs=(attr,))
      for name, attr, same, source in (
          ("same-clothes", "clothes", True, f"{_CC} evaluate_with_clothes(mode='SC')"),
          ("clothes-changing", "clothes", False, f"{_CC} evaluate_with_clothes(mode='CC')"),
          ("same-location", "location", True, f"{_MEVID} evaluate_with_locations(mode='SL')"),
          ("changed-location", "location", False, f"{_MEVID} evaluate_with_locations(mode='DL')"),
          ("same-scale", "scale", True, f"{_MEVID} evaluate_with_scales(mode='SS')"),
          ("changed-scale", "scale", False, f"{_MEVID} evaluate_with_scales(mode='DS')"))),
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


def _rows(items: dict, which) -> dict:
    """Queries `which` (a slice or indices) of `items` as (c, 1) columns, to broadcast against gallery rows."""
    return {k: v[which, None] for k, v in items.items()}


def _cols(items: dict) -> dict:
    return {k: v[None, :] for k, v in items.items()}


def block_masks(protocol: Protocol, q: dict, g: dict):
    """protocol.masks on a block (or on pairs), checked against the rules of Protocol (good implies keep and same pid)."""
    keep, good = (torch.broadcast_to(m, torch.broadcast_shapes(q["pids"].shape, g["pids"].shape))
                  for m in protocol.masks(q, g))
    if bool((good & ~(keep & (q["pids"] == g["pids"]))).any()):
        raise ValueError(f"protocol {protocol.name!r}: its masks mark as good an item that is not kept or has "
                         "another pid (a good match must be kept and be the query's pid)")
    return keep, good


def chance_rank1(q_pids, g_pids, q_camids, g_camids, protocol: str = "official", chunk: int = 256,
                 gallery_chunk: int = 65536, *, q_attrs=None, g_attrs=None) -> float:
    """Expected rank-1 of random distances: per counted query, good / kept gallery items (counted
    over blocks of chunk x gallery_chunk, so any gallery size fits)."""
    p = get_protocol(protocol)
    q, g = _items(q_pids, q_camids, q_attrs, p, "q"), _items(g_pids, g_camids, g_attrs, p, "g")
    rates = []
    for s in range(0, len(q["pids"]), chunk):
        rows = _rows(q, slice(s, s + chunk))
        kept, good = torch.zeros(2, len(rows["pids"]), dtype=torch.float64)
        for t in range(0, len(g["pids"]), gallery_chunk):
            k, gd = block_masks(p, rows, _cols({n: v[t:t + gallery_chunk] for n, v in g.items()}))
            kept += k.sum(1)
            good += gd.sum(1)
        rate = good / kept.clamp(min=1)
        rates.append(rate[good > 0] if p.skip_unmatched else rate)
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


def rank_keys(dist: torch.Tensor, gidx: torch.Tensor) -> torch.Tensor:
    """One unique int64 per item that orders by float32 distance, ties by gallery index:
    (order-preserving bits of the distance) << 32 | index.  Sorting them is faster than a stable sort.
    -0.0 becomes 0.0 (adding 0.0 does), so that the two zeros tie."""
    bits = (dist.float() + 0.0).view(torch.int32).long()
    bits = torch.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits)  # negative floats: reverse their bit order
    return (bits << 32) | gidx


def _stable_argsort(dist: torch.Tensor, gidx: torch.Tensor) -> torch.Tensor:
    """Row-wise argsort by distance, ties by gallery index."""
    return torch.sort(rank_keys(dist, gidx), dim=1).values & 0xFFFFFFFF


# ----------------------------------------------------------------------------- from features
def _unit64(x: torch.Tensor) -> torch.Tensor:
    """Rows of x L2-normalised in float64 (F.normalize's eps)."""
    x = x.double()
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp(min=1e-12)


def _distance32(dot: torch.Tensor) -> torch.Tensor:
    """float32 distances 2 - 2 dot from float64 dot products of unit vectors, first rounded to a
    multiple of 2^-32: far above float64's error on the product (about dim x 2^-53), so that
    duplicates tie at exactly 0 whichever order the product was summed in; below float32's
    resolution for distances over 2^-8, which it leaves as they were."""
    return (2 - 2 * dot).mul_(2.0 ** 32).round_().div_(2.0 ** 32).float()


def feature_distances(qf, gf) -> torch.Tensor:
    """(queries, gallery) float32 distances 2 - 2 cos of the L2-normalised features, the dot products
    accumulated in float64: the matrix evaluate_features ranks without holding it.  float64 makes
    the float32 values independent (but for ~1e-8 of them) of how the product is split into blocks
    or summed, so blocks rank ties and near-ties as the whole matrix does."""
    return _distance32(_unit64(torch.as_tensor(qf)) @ _unit64(torch.as_tensor(gf)).T)


def _pairs(q: dict, g: dict, r: torch.Tensor, c: torch.Tensor) -> tuple[dict, dict]:
    """The attributes of (query r, gallery c) pairs, element by element, for Protocol.masks."""
    return {k: v[r] for k, v in q.items()}, {k: v[c] for k, v in g.items()}


def _same_pid_pairs(q_pids: torch.Tensor, g_by_pid: torch.Tensor, g_order: torch.Tensor):
    """(row, gallery index) of every gallery item with the pid of query `row`; g_by_pid holds the
    gallery pids sorted (stably), g_order their gallery indices."""
    lo = torch.searchsorted(g_by_pid, q_pids)
    n = torch.searchsorted(g_by_pid, q_pids, right=True) - lo
    row = torch.repeat_interleave(torch.arange(len(q_pids), device=n.device), n)
    start = torch.cumsum(n, 0) - n
    return row, g_order[lo[row] + torch.arange(len(row), device=n.device) - start[row]]


def _by_row(row: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For row ids sorted ascending: each element's 0-based position within its row, and the rows' counts."""
    counts = torch.bincount(row, minlength=n_rows)
    return torch.arange(len(row), device=row.device) - (torch.cumsum(counts, 0) - counts)[row], counts


def evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, protocol: str = "official", max_rank: int = 50,
                      *, q_attrs: dict | None = None, g_attrs: dict | None = None, query_block: int = 1024,
                      gallery_block: int | None = None) -> dict:
    """What evaluate(feature_distances(qf, gf), ...) returns, computed block by block on the
    features' device without the (queries x gallery) matrix: beyond small per-query tables, memory
    grows with query_block x gallery_block (default 2048 on the CPU, 65536 on a GPU, where fewer,
    larger blocks launch fewer kernels), not with the gallery.

    AP and CMC need, for each good match, its rank among the kept items: 1 + the kept items that
    rank before it (by distance, then gallery index, as evaluate's stable sort).  Good matches are
    found from the pids alone (a good match has the query's pid) and their distances computed
    exactly.  Then each (gallery block, query block) product is screened in float32: the queries
    that may have an item there ranking before their farthest good match get the block's float64
    distances, and its kept items are counted per interval between consecutive good matches (a
    searchsorted into the query's sorted goods)."""
    p = get_protocol(protocol)
    qf, gf = torch.as_tensor(qf), torch.as_tensor(gf)
    for name, f in (("qf", qf), ("gf", gf)):
        if f.dim() != 2 or not f.is_floating_point():
            raise ValueError(f"{name} must be a floating (num_items, dim) array, got {tuple(f.shape)} {f.dtype}")
    if qf.shape[1] != gf.shape[1] or qf.device != gf.device:
        raise ValueError(f"qf and gf must have one feature size and one device, got {tuple(qf.shape)} on {qf.device} "
                         f"and {tuple(gf.shape)} on {gf.device}")
    if not (bool(torch.isfinite(qf).all()) and bool(torch.isfinite(gf).all())):
        raise ValueError("qf and gf must be finite (found NaN or inf)")
    q = {k: v.to(qf.device) for k, v in _items(q_pids, q_camids, q_attrs, p, "q").items()}
    g = {k: v.to(qf.device) for k, v in _items(g_pids, g_camids, g_attrs, p, "g").items()}
    if len(q["pids"]) != len(qf) or len(g["pids"]) != len(gf):
        raise ValueError(f"ids must have one entry per feature: qf {len(qf)} rows, q ids {len(q['pids'])}; "
                         f"gf {len(gf)} rows, g ids {len(g['pids'])}")
    g_by_pid, g_order = torch.sort(g["pids"], stable=True)
    gallery_block = gallery_block or (65536 if qf.is_cuda else 2048)
    blocks = [_QueryBlock(p, {k: v[s:s + query_block] for k, v in q.items()}, qf[s:s + query_block], g, gf,
                          g_by_pid, g_order) for s in range(0, len(qf), query_block)]
    busy = [b for b in blocks if b.goods is not None]
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32 / bf16 products: the screen's margin assumes float32
    try:
        for g0 in range(0, len(gf) if busy else 0, gallery_block):
            g64 = _unit64(gf[g0:g0 + gallery_block])
            g32, gb = g64.float(), {k: v[g0:g0 + gallery_block] for k, v in g.items()}
            for b in busy:
                b.count(p, gb, g32, g64, g0)
    finally:
        torch.set_float32_matmul_precision(prev)
    totals = _Totals(p, min(max_rank, len(gf)))
    for b in blocks:
        totals.add(*b.hits())
    return totals.result()


class _QueryBlock:
    """The state of evaluate_features for a block of queries: their good matches, sorted by rank
    key per query (goods, padded), and per query the kept non-good items counted so far in each
    interval between consecutive good matches (before)."""

    def __init__(self, p: Protocol, q: dict, qf, g: dict, gf, g_by_pid, g_order):
        n, self.q, self.q64 = len(qf), q, _unit64(qf)
        self.q32 = self.q64.float()
        row, gi = _same_pid_pairs(q["pids"], g_by_pid, g_order)
        good = block_masks(p, *_pairs(q, g, row, gi))[1]
        row, gi = row[good], gi[good]
        d = _distance32((self.q64[row] * _unit64(gf[gi])).sum(1))
        key = rank_keys(d, gi)
        order = torch.argsort(key)
        order = order[torch.argsort(row[order], stable=True)]
        self.row, key, d = row[order], key[order], d[order]
        self.j, self.n_good = _by_row(self.row, n)                  # j: 0-based index among the query's goods
        m = int(self.n_good.max()) if n else 0
        self.goods = None
        if m:
            self.goods = torch.full((n, m), torch.iinfo(torch.int64).max, device=qf.device)  # pads after every key
            self.goods[self.row, self.j] = key
            self.before = torch.zeros(n, m + 1, dtype=torch.int64, device=qf.device)
            d_max = torch.full((n,), float("-inf"), dtype=torch.float64, device=qf.device).scatter_reduce_(
                0, self.row, d.double(), "amax")
            # an item may rank before the farthest good when its float32 product is at least the farthest
            # good's minus the margin: |float32 - float64 product| <= (dim + 4) 2^-24 for unit vectors (the
            # inputs' rounding, then any summation order); the margin is 4 times that
            self.threshold = ((2 - d_max) / 2 - 4 * (qf.shape[1] + 4) * 2.0 ** -24).float()

    def count(self, p: Protocol, gb: dict, g32, g64, g0: int) -> None:
        """Count the kept non-good items of the gallery block g0.. (ids gb, unit features g32, g64) into
        `before`, for the queries that have an item there that may rank before their farthest good."""
        rows = ((self.q32 @ g32.T).amax(1) >= self.threshold).nonzero().squeeze(1)
        if not len(rows):
            return
        keep, good = block_masks(p, _rows(self.q, rows), _cols(gb))
        key = rank_keys(_distance32(self.q64[rows] @ g64.T), torch.arange(g0, g0 + len(g64), device=g64.device))
        pos = torch.searchsorted(self.goods[rows], key, right=True)   # the query's goods at or before each item
        # goods are ranked among themselves by j; items after the last good land in before[:, m], unused
        flat = (rows[:, None] * self.before.shape[1] + pos)[keep & ~good]
        self.before.view(-1).index_add_(0, flat, torch.ones_like(flat))

    def hits(self):
        """For _Totals.add: good matches per query, then per hit its query, k and rank among kept items."""
        rank = self.j + 1
        if self.goods is not None:                                   # + the kept non-good items before it
            rank = rank + torch.cumsum(self.before, 1)[self.row, self.j]
        return self.n_good, self.row, self.j + 1, rank


def ranks(result: dict, which=(1, 5, 10, 20)) -> dict:
    """{"rank1": .., "rank5": .., ...} from an evaluate() result."""
    return {f"rank{r}": float(result["cmc"][r - 1]) for r in which if r <= len(result["cmc"])}
