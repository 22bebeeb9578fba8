"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li, CVPR 2017), vectorised and chunked.

    final = rerank(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3)   # (Q, G)

The definition and defaults are those of the authors' reference code (the one torchreid and
fast-reid carry).  With the three blocks put together into one (Q+G) x (Q+G) matrix A:

1. d = A**2 in float32, each column divided by its maximum, transposed: row i of d is column i
   of A**2 over its maximum (for symmetric inputs: row i over its maximum).
2. N(i, k): the k + 1 nearest items of row i of d (i itself included when it is nearest).
   Equal distances rank by index (a stable sort; the reference's quicksort leaves them unordered).
3. R(i) = {c in N(i, k1) : i in N(c, k1)}, the k-reciprocal set.  For every c in R(i), with
   R_half(c) built the same way from N(., round(k1 / 2)): if |R_half(c) & R(i)| > 2/3 |R_half(c)|,
   R_half(c) joins the expanded set R*(i).
4. V[i, j] = exp(-d[i, j]) / sum over R*(i), for j in R*(i); 0 elsewhere.
5. Local query expansion (k2 != 1): V[i] <- the mean of the rows V[j], j among the k2 nearest of i.
6. Jaccard distance: J[i, j] = 1 - m / (2 - m), m = sum_l min(V[i, l], V[j, l]).
7. final = (1 - lambda) J + lambda d, the query x gallery block.

Memory: the (Q+G)^2 matrices d and V are never formed (at MARS scale, 14,160 items, each would
take 800 MB in float32).  d is built from the input blocks in chunks of rows, `chunk_elems`
values at a time, for one top-k pass (the nearest neighbours); the few entries of d that V's
weights need are then read from the blocks directly.  V has at most (k1 + 1)(round(k1/2) + 2)
non-zeros per row and is kept sparse (COO, sorted by row); the Jaccard sums run over the pairs of
non-zeros that share a column, in chunks of queries holding at most `max_pairs` pairs.  Every
other temporary holds at most about `chunk_elems` values.  Beyond its inputs and the (Q, G)
output, working memory is O(chunk_elems + nnz(V) k2 + max_pairs).

Everything runs in torch on the device of the inputs (GPU included); numpy inputs give a numpy
result.  No Python loop runs over queries or gallery items, only over chunks.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["rerank"]


def rerank(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, *,
           chunk_elems: int = 1 << 22, max_pairs: int = 1 << 22):
    """The k-reciprocal re-ranked query x gallery distance (see the module doc for the definition).

    q_g_dist (Q, G), q_q_dist (Q, Q), g_g_dist (G, G): distances (numpy arrays or tensors, any float
    dtype, one device); k1: size of the k-reciprocal neighbourhood; k2: of the local query
    expansion (1 turns it off); lambda_value in [0, 1]: the weight of the original distance.
    chunk_elems, max_pairs: the memory bounds of the chunks (see the module doc).
    Returns a float32 (Q, G) array (numpy inputs) or tensor on the inputs' device.
    """
    as_numpy = not isinstance(q_g_dist, Tensor)
    qg, qq, gg = _check(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)
    q, g = qg.shape
    n = q + g
    if chunk_elems < n or max_pairs < 1:
        raise ValueError(f"rerank: chunk_elems must be >= Q + G = {n} and max_pairs >= 1, got {chunk_elems}, "
                         f"{max_pairs}")
    blocks = _Blocks(qg, qq, gg)

    k = min(k1 + 1, n)                      # |N(i, k1)|
    k_half = min(int(round(k1 / 2)) + 1, n)  # |N(i, round(k1 / 2))|; round() halves to even, as np.around
    k_qe = min(k2, n)
    rank = blocks.nearest(max(k, k_qe), chunk_elems)                         # (n, max(k, k_qe))
    recip = _reciprocal(rank[:, :k], chunk_elems)                            # (n, k) bool: in R(i)
    half = rank[:, :k_half]
    half_recip = _reciprocal(half, chunk_elems)                              # (n, k_half): in R_half(i)
    v = _weights(blocks, rank[:, :k], recip, half, half_recip, chunk_elems)  # COO of V, by row
    if k2 != 1:
        v = _query_expansion(v, rank[:, :k_qe], n, chunk_elems // (k * (k_half + 1)))
    final = torch.empty(q, g, dtype=torch.float32, device=qg.device)
    for s, e, jaccard in _jaccard(v, q, n, max_pairs, chunk_elems):     # step 7, by chunks of queries
        final[s:e] = jaccard.mul_(1 - lambda_value).add_(blocks.query_gallery(s, e), alpha=lambda_value)
    return final.cpu().numpy() if as_numpy else final


def _check(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value):
    mats = []
    for name, m in (("q_g_dist", q_g_dist), ("q_q_dist", q_q_dist), ("g_g_dist", g_g_dist)):
        t = m if isinstance(m, Tensor) else torch.as_tensor(np.asarray(m))
        if t.dim() != 2 or t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"rerank: {name} must be a 2-D real matrix, got shape {tuple(t.shape)} of {t.dtype}")
        if not t.is_floating_point():
            t = t.double()  # integer distances are squared exactly, as numpy would
        mats.append(t)
    dtype = torch.promote_types(torch.promote_types(mats[0].dtype, mats[1].dtype), mats[2].dtype)
    qg, qq, gg = (t.to(dtype) for t in mats)  # one dtype, as numpy's concatenation of the blocks
    q, g = qg.shape
    for name, t, want in (("q_q_dist", qq, (q, q)), ("g_g_dist", gg, (g, g))):
        if tuple(t.shape) != want:
            raise ValueError(f"rerank: {name} must be {want} for q_g_dist of shape {(q, g)} (queries x gallery), "
                             f"got {tuple(t.shape)}")
    if q == 0 or g == 0:
        raise ValueError(f"rerank: no queries or no gallery items (q_g_dist {(q, g)})")
    if qq.device != qg.device or gg.device != qg.device:
        raise ValueError(f"rerank: the three matrices must be on one device, got {qg.device}, {qq.device}, {gg.device}")
    if isinstance(k1, bool) or not isinstance(k1, (int, np.integer)) or k1 < 0:
        raise ValueError(f"rerank: k1 must be an int >= 0, got {k1!r}")
    if isinstance(k2, bool) or not isinstance(k2, (int, np.integer)) or k2 < 1:
        raise ValueError(f"rerank: k2 must be an int >= 1, got {k2!r}")
    if not 0 <= lambda_value <= 1:
        raise ValueError(f"rerank: lambda_value must be in [0, 1], got {lambda_value!r}")
    return qg, qq, gg


class _Blocks:
    """Rows and entries of d (step 1) computed from the three input blocks, never all at once."""

    def __init__(self, qg: Tensor, qq: Tensor, gg: Tensor):
        self.qg, self.qq, self.gg = qg, qq, gg
        self.q, self.g = qg.shape
        self.n = self.q + self.g
        self.col_max = torch.empty(self.n, dtype=torch.float32, device=qg.device)

    def _columns(self, start: int, stop: int) -> Tensor:
        """Columns start..stop-1 of A, as rows (stop - start, n) in the inputs' dtype."""
        q = self.q
        out = torch.empty(stop - start, self.n, dtype=self.qg.dtype, device=self.qg.device)
        if start < q:    # a query's column: its q_q column, then its q_g row (the q_g^T block)
            s, e = start, min(stop, q)
            out[:e - s, :q] = self.qq[:, s:e].T
            out[:e - s, q:] = self.qg[s:e]
        if stop > q:     # a gallery item's column: its q_g column, then its g_g column
            s, e, o = max(start, q) - q, stop - q, max(start, q) - start
            out[o:, :q] = self.qg[:, s:e].T
            out[o:, q:] = self.gg[:, s:e].T
        return out

    def _name(self, item: int) -> str:
        return f"query {item}" if item < self.q else f"gallery {item - self.q}"

    def rows(self, start: int, stop: int) -> Tensor:
        """Rows start..stop-1 of d: each column of A squared (in the inputs' precision, then float32,
        as the reference) over its maximum.  Records the maxima."""
        sq = self._columns(start, stop).square_().to(torch.float32)
        top = sq.amax(dim=1)  # NaN if the column has one, inf if it has one (or one overflows when squared)
        if not bool(torch.isfinite(top).all()):
            bad = start + int(torch.nonzero(~torch.isfinite(top))[0])
            raise ValueError(f"rerank: the distances of item {bad} ({self._name(bad)}) include NaN or infinite "
                             "values (or values whose square overflows float32)")
        if not bool((top > 0).all()):
            bad = start + int(torch.nonzero(top <= 0)[0])
            raise ValueError(f"rerank: item {bad} ({self._name(bad)}) is at distance 0 from every item: "
                             "its column cannot be normalised by its maximum")
        self.col_max[start:stop] = top
        return sq.div_(top[:, None])

    def at(self, i: Tensor, j: Tensor) -> Tensor:
        """d[i, j] = A[j, i]**2 / max of column i, for index tensors i, j of one shape (after rows())."""
        q, qg = self.q, self.qg
        iq, jq = i < q, j < q
        ig, jg = (i - q).clamp(min=0), (j - q).clamp(min=0)
        i0, j0 = i.clamp(max=q - 1), j.clamp(max=q - 1)
        a = torch.where(jq, torch.where(iq, self.qq[j0, i0], qg[j0, ig]),   # A[j, i] from its block
                        torch.where(iq, qg[i0, jg], self.gg[jg, ig]))
        return a.square().to(torch.float32) / self.col_max[i]

    def nearest(self, k: int, chunk_elems: int) -> Tensor:
        """(n, k) indices of the k nearest items of every row of d, ties by index (step 2)."""
        rows_per_chunk = max(1, chunk_elems // self.n)
        out = torch.empty(self.n, k, dtype=torch.int64, device=self.qg.device)
        for s in range(0, self.n, rows_per_chunk):
            e = min(s + rows_per_chunk, self.n)
            out[s:e] = _stable_smallest(self.rows(s, e), k)
        return out

    def query_gallery(self, start: int, stop: int) -> Tensor:
        """Rows start..stop-1 of the (Q, G) block of d: q_g**2 over the maxima of the query columns."""
        return self.qg[start:stop].square().to(torch.float32).div_(self.col_max[start:stop, None])


def _stable_smallest(d: Tensor, k: int) -> Tensor:
    """Indices of the k smallest values of each row of d (>= 0), in the order of a stable sort."""
    n = d.shape[1]
    index = torch.arange(n, device=d.device)

    def by_key(values: Tensor, idx: Tensor) -> Tensor:
        # d >= 0, so its float32 bits order like its values; with the index in the low 32 bits every
        # key is unique and sorting keys is a stable sort of the values.
        keys = (values.contiguous().view(torch.int32).to(torch.int64) << 32) | idx
        return torch.topk(keys, k, dim=1, largest=False, sorted=True).values & 0xFFFFFFFF

    if k == n:
        return by_key(d, index)
    values, idx = torch.topk(d, k + 1, dim=1, largest=False, sorted=True)
    out = by_key(values[:, :k], idx[:, :k])   # the k smallest in stable order, if they are the right set:
    tie = values[:, k] == values[:, k - 1]    # not when the (k+1)-th equals the k-th (which index wins?)
    if bool(tie.any()):
        out[tie] = by_key(d[tie], index)
    return out


def _reciprocal(neighbours: Tensor, chunk_elems: int) -> Tensor:
    """(n, k) bool: neighbours[i, a] has i among its own k neighbours."""
    n, k = neighbours.shape
    out = torch.empty(n, k, dtype=torch.bool, device=neighbours.device)
    step = max(1, chunk_elems // (k * k))  # (step, k, k) indices at a time
    for s in range(0, n, step):
        e = min(s + step, n)
        own = torch.arange(s, e, device=neighbours.device)[:, None, None]
        out[s:e] = (neighbours[neighbours[s:e]] == own).any(dim=-1)
    return out


def _weights(blocks: _Blocks, near: Tensor, recip: Tensor, half: Tensor, half_recip: Tensor,
             chunk_elems: int) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 3-4: V as (row, col, value), sorted by row then column."""
    n, k = near.shape
    half_size = half_recip.sum(dim=1)
    sentinel = n  # sorts after every real index
    rows, cols, vals = [], [], []
    step = max(1, chunk_elems // (k * half.shape[1] * k))  # the (step, k, k_half, k) membership test
    for s in range(0, n, step):
        e = min(s + step, n)
        r_near, r_recip = near[s:e], recip[s:e]                       # (r, k)
        cand_sets, cand_mask = half[r_near], half_recip[r_near]        # (r, k, k_half): R_half(c) of each c
        # |R_half(c) & R(i)|: R_half(c)'s members that are among i's reciprocal neighbours
        in_r = (cand_sets[..., :, None] == r_near[:, None, None, :]) & r_recip[:, None, None, :]
        shared = (in_r.any(dim=-1) & cand_mask).sum(dim=-1)
        # > 2/3 |R_half(c)| evaluated in float64, as the reference does
        joins = r_recip & (shared.double() > (2.0 / 3) * half_size[r_near].double())
        members = torch.cat([torch.where(r_recip, r_near, sentinel),
                             torch.where(joins[..., None] & cand_mask, cand_sets, sentinel).flatten(1)], dim=1)
        members = members.sort(dim=1).values
        first = torch.ones_like(members, dtype=torch.bool)
        first[:, 1:] = members[:, 1:] != members[:, :-1]
        keep = first & (members < sentinel)                            # R*(i), each member once
        owner = torch.arange(s, e, device=members.device)[:, None].expand_as(members)
        d = blocks.at(owner, members.clamp(max=n - 1))
        w = torch.where(keep, torch.exp(-d), torch.zeros_like(d))
        w = w / w.sum(dim=1, keepdim=True)
        r_idx, c_idx = keep.nonzero(as_tuple=True)
        rows.append(r_idx + s)
        cols.append(members[r_idx, c_idx])
        vals.append(w[r_idx, c_idx])
    return torch.cat(rows), torch.cat(cols), torch.cat(vals)


def _segments(starts: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """For segments [starts[s], starts[s] + counts[s]): (the segment of each element, its position)."""
    seg = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    offsets = torch.cumsum(counts, 0) - counts
    pos = torch.arange(len(seg), device=counts.device) - offsets[seg] + starts[seg]
    return seg, pos


def _row_pointers(rows: Tensor, n: int) -> Tensor:
    ptr = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    return ptr


def _query_expansion(v, neighbours: Tensor, n: int, rows_per_chunk: int):
    """Step 5: row i of V <- the mean of the rows of its k2 nearest items (sparse rows gathered and summed)."""
    rows, cols, vals = v
    ptr = _row_pointers(rows, n)
    k2 = neighbours.shape[1]
    out_r, out_c, out_v = [], [], []
    step = max(1, rows_per_chunk // k2)  # rows_per_chunk * (at most k (k_half + 1) non-zeros per row of V)
    for s in range(0, n, step):
        e = min(s + step, n)
        nb = neighbours[s:e].reshape(-1)                              # the rows to average, k2 per item
        seg, pos = _segments(ptr[nb], ptr[nb + 1] - ptr[nb])
        owner = seg // k2 + s
        key, inverse = torch.unique(owner * n + cols[pos], return_inverse=True)   # sorted: by row, then column
        summed = torch.zeros(len(key), dtype=vals.dtype, device=vals.device).index_add_(0, inverse, vals[pos])
        out_r.append(key // n)
        out_c.append(key % n)
        out_v.append(summed / k2)
    return torch.cat(out_r), torch.cat(out_c), torch.cat(out_v)


def _jaccard(v, q: int, n: int, max_pairs: int, chunk_elems: int):
    """Step 6 for the query rows against the gallery rows: yields (s, e, J) with J the (e - s, G)
    Jaccard distances of queries s..e-1.

    m[i, j] = sum_l min(V[i, l], V[j, l]) only has terms where both are non-zero: for each
    non-zero (i, l) of a query, the gallery rows j with a non-zero in column l (a column index of
    V's gallery rows), as flat pairs.
    """
    rows, cols, vals = v
    g = n - q
    device = vals.device
    is_query = rows < q
    q_rows, q_cols, q_vals = rows[is_query], cols[is_query], vals[is_query]        # sorted by row
    g_sel = ~is_query
    order = torch.argsort(cols[g_sel] * n + rows[g_sel])                           # by column, then row
    g_rows, g_cols, g_vals = rows[g_sel][order] - q, cols[g_sel][order], vals[g_sel][order]
    col_ptr = _row_pointers(g_cols, n)
    pairs = col_ptr[q_cols + 1] - col_ptr[q_cols]                                  # per query non-zero
    q_ptr = _row_pointers(q_rows, q)
    pairs_before = torch.zeros(len(pairs) + 1, dtype=torch.int64, device=device)
    pairs_before[1:] = torch.cumsum(pairs, 0)
    per_query = pairs_before[q_ptr]                                                # pairs before query i
    rows_per_chunk = max(1, chunk_elems // g)  # the (rows, G) sums
    s = 0
    while s < q:  # chunks of at most rows_per_chunk queries with at most max_pairs pairs (but at least one query)
        e = int(torch.searchsorted(per_query, per_query[s] + max_pairs, right=True)) - 1
        e = min(max(e, s + 1), q, s + rows_per_chunk)
        lo, hi = int(q_ptr[s]), int(q_ptr[e])
        seg, pos = _segments(col_ptr[q_cols[lo:hi]], pairs[lo:hi])
        overlap = torch.minimum(q_vals[lo:hi][seg], g_vals[pos])
        m = torch.zeros((e - s) * g, dtype=torch.float32, device=device)
        m.index_add_(0, (q_rows[lo:hi][seg] - s) * g + g_rows[pos], overlap)
        m = m.view(e - s, g)
        yield s, e, 1 - m / (2 - m)
        s = e
