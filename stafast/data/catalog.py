"""Datasets by the name the CLIs take (--dataset): the three published layouts, video files listed
by a manifest, and the synthetic set."""
from __future__ import annotations

from .datasets import DATASETS, MARS, VideoDataset
from .manifest import VideoFiles

DATASET_NAMES = (*DATASETS, "videos", "synthetic")


def load_dataset(name: str, root: str | None = None, split: int = 0, protocol: str = "official") -> VideoDataset:
    """Dataset `name` from `root`; "synthetic" is the generated MARS-layout set (`root` optional:
    a folder to generate it into or read it from, by default a cache; see synth.cached_mars);
    "videos" is a folder of video files with its manifest (see manifest.py)."""
    if name == "synthetic":
        from . import synth  # here, not at the top: `python -m stafast.data.synth` must not find it imported
        return MARS(synth.cached_mars(root), protocol)
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASET_NAMES}")
    if not root:
        what = "its manifest and video files" if name == "videos" else "its published layout"
        raise ValueError(f"--root is required for --dataset {name} (the folder holding {what})")
    if name == "videos":
        return VideoFiles(root)
    if name == "mars":
        return MARS(root, protocol)
    return DATASETS[name](root, split)
