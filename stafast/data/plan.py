"""What every sample of an epoch reads: a pure function of (seed, epoch, position).

The DALI pipeline (whose parallel workers are forked once) and the torch DataLoader (whose
workers are forked per epoch) both ask this plan, so they read the same frames and flip the
same clips without sharing any state, and a resumed run replays an epoch exactly.

Train order is identity-balanced when `ids_per_batch` (P) and `tracklets_per_id` (Q) are given:
each batch holds P ids x Q tracklets (drawn with replacement for ids with fewer than Q), else a
shuffled pass over the tracklets.  Test order is the tracklet order, unflipped.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .datasets import Tracklet
from .sampling import sample_frames


class ClipPlan:
    def __init__(self, tracklets: list[Tracklet], num_frames: int = 6, mode: str = "train", seed: int = 0,
                 flip: bool | None = None, ids_per_batch: int | None = None, tracklets_per_id: int = 4):
        if not tracklets:
            raise ValueError("ClipPlan needs at least one tracklet")
        self.tracklets, self.n, self.mode, self.seed = tracklets, num_frames, mode, seed
        self.flip = (mode == "train") if flip is None else flip
        self.p, self.q = ids_per_batch, tracklets_per_id
        self.by_id: dict[int, list[int]] = defaultdict(list)
        for i, t in enumerate(tracklets):
            self.by_id[t.pid].append(i)
        if self.p is not None and self.p > len(self.by_id):
            raise ValueError(f"ids_per_batch={self.p} but the tracklets hold only {len(self.by_id)} ids")
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        """Tracklet index of every position of `epoch`."""
        if epoch not in self._orders:
            if self.mode != "train":
                order = np.arange(len(self.tracklets))
            elif self.p is None:
                order = np.random.default_rng([self.seed, epoch]).permutation(len(self.tracklets))
            else:
                rng = np.random.default_rng([self.seed, epoch])
                ids = rng.permutation(sorted(self.by_id))
                ids = ids[: len(ids) // self.p * self.p]
                order = np.concatenate([rng.choice(self.by_id[pid], self.q, replace=len(self.by_id[pid]) < self.q)
                                        for pid in ids])
            self._orders = {epoch: order}  # keep one epoch: workers ask about the current one
        return self._orders[epoch]

    def __len__(self) -> int:
        return len(self.order(0))

    def sample(self, epoch: int, position: int) -> tuple[Tracklet, np.ndarray, bool]:
        """(tracklet, frame indices (N,) or (C, N) in "all" mode, horizontal flip)."""
        t = self.tracklets[self.order(epoch)[position]]
        rng = np.random.default_rng([self.seed, epoch, position])
        frames = sample_frames(len(t), self.n, self.mode, rng)
        flip = bool(self.flip and rng.random() < 0.5)
        return t, frames, flip


def check_start(start: int, batches: int) -> int:
    """`start`, the batch a pass over an epoch of `batches` batches begins at (== batches: nothing left)."""
    if not 0 <= start <= batches:
        raise ValueError(f"start batch {start} is outside the epoch's {batches} batches")
    return start


class ShardedPlan:
    """One rank's share of every global batch of a ClipPlan, keeping the global positions (so the
    frames and flips are those a single process would draw)."""

    def __init__(self, plan: ClipPlan, rank: int, world: int, batch: int):
        if batch % world:
            raise ValueError(f"the global batch ({batch} clips) must divide among {world} processes")
        self.plan, self.rank, self.world, self.batch = plan, rank, world, batch
        self.n, self.mode, self.seed, self.tracklets = plan.n, plan.mode, plan.seed, plan.tracklets
        self.local = batch // world

    def _global(self, position: int) -> int:
        b, i = divmod(position, self.local)
        return b * self.batch + self.rank * self.local + i

    def order(self, epoch: int) -> np.ndarray:
        full = self.plan.order(epoch)
        usable = len(full) // self.batch * self.batch
        return full[[self._global(p) for p in range(usable // self.world)]]

    def __len__(self) -> int:
        return len(self.order(0))

    def sample(self, epoch: int, position: int):
        return self.plan.sample(epoch, self._global(position))
