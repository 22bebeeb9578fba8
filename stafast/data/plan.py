"""What every sample of an epoch reads: a pure function of (seed, epoch, position).

The DALI pipeline (whose parallel workers are forked once) and the torch DataLoader (whose
workers are forked per epoch) both ask this plan, so they read the same frames and augment the
same clips in the same way without sharing any state, and a resumed run replays an epoch
exactly: every random choice of a sample (its frames, then its augmentation) comes from one
generator seeded with (seed, epoch, position).

Train order is identity-balanced when `ids_per_batch` (P) and `tracklets_per_id` (Q) are given:
each batch holds P ids x Q tracklets (drawn with replacement for ids with fewer than Q), else a
shuffled pass over the tracklets.  Test order is the tracklet order, never augmented.

Augmentations (`Augmentation`, --augment) are drawn once per clip and applied to all its N
frames, as the video re-ID baselines do (AP3D and TCLNet draw their spatial transforms'
parameters once per clip, `randomize_parameters`, then transform every frame with them): a
clip stays one consistent view of a person, so temporal attention still compares like with
like; the synthetic set's occluders already vary per frame (synth.py).  In pipeline order, on
the frames resized to the model input (height x width):
- crop: "pad and crop" of the strong baselines (Luo et al., "Bag of Tricks and a Strong Baseline
  for Deep Person Re-identification", 2019: pad 10 pixels at 256x128, random 256x128 crop):
  a window of the input size at a uniform offset in [-pad, pad]^2, pixels outside the frame
  black (zero before normalisation, as torchvision's Pad); pad = round(10 * height / 256).
- flip: horizontal, probability 0.5 (the baselines' and torchvision's RandomHorizontalFlip).
  Crop then flip draws the same views as the baselines' flip then crop (uniform offsets).
- erase: random erasing (Zhong et al., "Random Erasing Data Augmentation", 2017, Alg. 1):
  probability 0.5, area 2-40% of the frame, aspect ratio in [0.3, 1/0.3], up to 100 tries
  for a box inside the frame; filled with the ImageNet mean colour (0 after normalisation, as
  torchvision's RandomErasing(value=0) after Normalize and fast-reid's mean-pixel fill).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .datasets import Tracklet
from .sampling import sample_frames


AUGMENTATIONS = ("crop", "flip", "erase")  # in the order they are applied (module doc)


@dataclass(frozen=True)
class ClipAugment:
    """One clip's augmentation, in pixels of the model input (the same for all its frames).
    crop: (top, left) of the window in the resized frame (either may be negative: the window then
    starts outside, where the pixels are black), or None; erase: (top, left, height, width) of
    the box filled with the mean colour, or None."""
    flip: bool = False
    crop: tuple[int, int] | None = None
    erase: tuple[int, int, int, int] | None = None


NO_AUGMENT = ClipAugment()


@dataclass(frozen=True)
class Augmentation:
    """Which augmentations (a subset of AUGMENTATIONS) a plan draws for each clip, and their
    parameters (module doc).  crop and erase need the model input size, height x width."""
    names: tuple[str, ...] = ()
    height: int | None = None
    width: int | None = None
    flip_p: float = 0.5
    pad: int | None = None             # default: round(10 * height / 256)
    erase_p: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.4)
    erase_ratio: float = 0.3           # aspect ratios in [erase_ratio, 1 / erase_ratio]
    erase_tries: int = 100

    def __post_init__(self):
        unknown = [n for n in self.names if n not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; expected a subset of {AUGMENTATIONS}")
        if {"crop", "erase"} & set(self.names) and not (self.height and self.width):
            raise ValueError(f"augmentations {self.names} need the model input size, got height={self.height}, "
                             f"width={self.width}")
        object.__setattr__(self, "names", tuple(n for n in AUGMENTATIONS if n in self.names))
        if self.pad is None and self.height:
            object.__setattr__(self, "pad", round(10 * self.height / 256))

    def draw(self, rng: np.random.Generator) -> ClipAugment:
        """The augmentation of one clip, drawn from `rng` (flip first: without crop and erase the
        draws are those of the plan before augmentations had parameters)."""
        flip = "flip" in self.names and bool(rng.random() < self.flip_p)
        crop = erase = None
        if "crop" in self.names:
            top, left = rng.integers(-self.pad, self.pad + 1, size=2)
            crop = (int(top), int(left))
        if "erase" in self.names and rng.random() < self.erase_p:
            erase = self._erase_box(rng)
        return ClipAugment(flip, crop, erase)

    def _erase_box(self, rng: np.random.Generator) -> tuple[int, int, int, int] | None:
        """Zhong et al.'s Alg. 1: area and aspect ratio uniform, retried until the box fits."""
        h, w = self.height, self.width
        for _ in range(self.erase_tries):
            area = rng.uniform(*self.erase_area) * h * w
            ratio = rng.uniform(self.erase_ratio, 1 / self.erase_ratio)
            eh, ew = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
            if 0 < eh < h and 0 < ew < w:
                return int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1)), eh, ew
        return None

    def check_size(self, height: int, width: int) -> None:
        """A pipeline producing height x width clips must have been planned for that size."""
        if {"crop", "erase"} & set(self.names) and (self.height, self.width) != (height, width):
            raise ValueError(f"the plan's augmentations were drawn for {self.height}x{self.width} clips, but the "
                             f"pipeline makes {height}x{width} ones")


def parse_augment(text: str) -> tuple[str, ...]:
    """--augment's value: comma-separated names of AUGMENTATIONS, or "none"."""
    names = tuple(n.strip() for n in text.split(",") if n.strip() and n.strip() != "none")
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"augment={text!r}: unknown {unknown}; expected comma-separated names from {AUGMENTATIONS}, "
                         "or none")
    return names


class ClipPlan:
    """Samples of an epoch.  `augment`: what each training clip draws (default: flips only, the
    behaviour before --augment); test and all-frames clips are never augmented."""

    def __init__(self, tracklets: list[Tracklet], num_frames: int = 6, mode: str = "train", seed: int = 0,
                 augment: Augmentation | None = None, ids_per_batch: int | None = None, tracklets_per_id: int = 4):
        if not tracklets:
            raise ValueError("ClipPlan needs at least one tracklet")
        self.tracklets, self.n, self.mode, self.seed = tracklets, num_frames, mode, seed
        if mode != "train":
            augment = Augmentation()
        self.augment = Augmentation(("flip",)) if augment is None else augment
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

    def sample(self, epoch: int, position: int) -> tuple[Tracklet, np.ndarray, ClipAugment]:
        """(tracklet, frame indices (N,) or (C, N) in "all" mode, the clip's augmentation)."""
        t = self.tracklets[self.order(epoch)[position]]
        rng = np.random.default_rng([self.seed, epoch, position])
        frames = sample_frames(len(t), self.n, self.mode, rng)
        return t, frames, self.augment.draw(rng)


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
        self.n, self.mode, self.seed, self.tracklets, self.augment = plan.n, plan.mode, plan.seed, plan.tracklets, \
            plan.augment
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
