"""Restricted random sampling (Sec. 3.1).

A tracklet of T frames is cut into N chunks of equal duration; chunk n spans frames
[floor(n T / N), floor((n + 1) T / N)).  Train: one random frame per chunk.  Test: the first
frame of each chunk.  All: every frame, in consecutive clips of N (the last one padded by
repeating its final frame), whose features are averaged.  Tracklets shorter than N repeat
frames (chunk n is then the single frame floor(n T / N)): never a crash.
"""
from __future__ import annotations

import numpy as np

MODES = ("train", "test", "all")


def chunk_bounds(num_frames: int, n: int) -> np.ndarray:
    """(N, 2) [start, stop) of each chunk; every chunk holds at least one frame."""
    if num_frames < 1:
        raise ValueError(f"a tracklet needs at least 1 frame, got {num_frames}")
    if n < 1:
        raise ValueError(f"the number of chunks N must be >= 1, got {n}")
    starts = (np.arange(n) * num_frames) // n
    stops = np.maximum((np.arange(1, n + 1) * num_frames) // n, starts + 1)
    return np.stack([starts, stops], axis=1)


def sample_frames(num_frames: int, n: int, mode: str = "train", rng: np.random.Generator | None = None) -> np.ndarray:
    """Frame indices: (N,) for train/test, (C, N) clips for all."""
    if mode not in MODES:
        raise ValueError(f"sampling mode must be one of {MODES}, got {mode!r}")
    if mode == "all":
        if num_frames < 1:
            raise ValueError(f"a tracklet needs at least 1 frame, got {num_frames}")
        clips = -(-num_frames // n)
        idx = np.minimum(np.arange(clips * n), num_frames - 1)
        return idx.reshape(clips, n)
    bounds = chunk_bounds(num_frames, n)
    if mode == "test":
        return bounds[:, 0].copy()
    rng = rng if rng is not None else np.random.default_rng()
    return rng.integers(bounds[:, 0], bounds[:, 1])


class RestrictedRandomSampler:
    """Reusable sampler: `sampler(num_frames)` -> frame indices for one tracklet.

    mode "train" draws from `seed` (reproducible; its state is `state_dict()`), "test" and
    "all" are deterministic.
    """

    def __init__(self, num_frames: int = 6, mode: str = "train", seed: int | None = None):
        if mode not in MODES:
            raise ValueError(f"sampling mode must be one of {MODES}, got {mode!r}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.n, self.mode = num_frames, mode
        self.rng = np.random.default_rng(seed)

    def __call__(self, tracklet_length: int) -> np.ndarray:
        return sample_frames(tracklet_length, self.n, self.mode, self.rng)

    def state_dict(self) -> dict:
        return {"n": self.n, "mode": self.mode, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.n, self.mode = state["n"], state["mode"]
        self.rng.bit_generator.state = state["rng"]
