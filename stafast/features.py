"""Features files: tracklet features with their ids, written by `python -m stafast.embed` and read by
`python -m stafast.evaluate --features` and `stafast.search`, without the model.

A features file is a dict saved with torch.save (read it with
`torch.load(path, weights_only=True, mmap=True)`, or `Features.load`):

    format    "stafast.features/1"
    features  (T, D) float32: the L2-normalised embedding of each distinct tracklet
    pids      (T,) int64 person ids (-1: unknown, e.g. embedded folders)
    camids    (T,) int64 camera ids
    paths     T strings: the tracklet's video file, or its first frame (MARS folders hold many tracklets)
    attrs     {name: (T,) int64}: per-tracklet labels some protocols compare (clothes, ...)
    splits    {split: {"query": (Q,) int64, "gallery": (G,) int64}}: row indices into the table.  One
              entry per split; iLIDS-VID and PRID2011 with --split all hold 10 sharing their rows
              (each tracklet is embedded once).  {} for tracklets without a split (embedded inputs).
    meta      {"dataset", "protocol", "gallery_protocol", "checkpoint", "all_frames", ...}: how it was
              made; gallery_protocol is the protocol the dataset built its gallery for, where the
              gallery depends on it (MARS)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import UserError

FORMAT = "stafast.features/1"


class FeaturesFileError(UserError, ValueError):
    """A features file that cannot be read, is not one, or lacks what was asked of it."""


class FeaturesFileNotFound(FeaturesFileError, FileNotFoundError):
    """No features file where one was given."""


@dataclass
class Features:
    features: torch.Tensor
    pids: torch.Tensor
    camids: torch.Tensor
    paths: list[str]
    attrs: dict[str, torch.Tensor] = field(default_factory=dict)
    splits: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.features)
        if self.features.dim() != 2:
            raise ValueError(f"features must be (tracklets, dim), got {tuple(self.features.shape)}")
        columns = {"pids": self.pids, "camids": self.camids, "paths": self.paths,
                   **{f"attrs[{k!r}]": v for k, v in self.attrs.items()}}
        wrong = {k: len(v) for k, v in columns.items() if len(v) != n}
        if wrong:
            raise ValueError(f"features has {n} rows but {wrong} (one entry per row expected)")
        for split, parts in self.splits.items():
            for part in ("query", "gallery"):
                rows = parts.get(part)
                if rows is None or rows.dim() != 1 or (len(rows) and not 0 <= int(rows.min()) <= int(rows.max()) < n):
                    raise ValueError(f"splits[{split!r}][{part!r}] must be row indices in 0..{n - 1}, got "
                                     f"{None if rows is None else tuple(rows.shape)}")

    def __len__(self) -> int:
        return len(self.features)

    def part(self, split, name: str) -> "Features":
        """The rows of `name` ("query" or "gallery") of `split`, as Features without splits; a contiguous
        range of rows stays a view (of a memory-mapped file too)."""
        if split not in self.splits:
            raise KeyError(f"this features file has splits {sorted(self.splits)}, not {split!r}")
        rows = self.splits[split][name]
        contiguous = len(rows) and int(rows[-1]) - int(rows[0]) + 1 == len(rows) and bool((rows.diff() == 1).all())
        take = slice(int(rows[0]), int(rows[-1]) + 1) if contiguous else rows
        return Features(self.features[take], self.pids[take], self.camids[take],
                        [self.paths[i] for i in rows.tolist()], {k: v[take] for k, v in self.attrs.items()},
                        meta=dict(self.meta, split=split, part=name))

    def save(self, path: str) -> None:
        torch.save({"format": FORMAT, "features": self.features.float().contiguous(), "pids": self.pids.long(),
                    "camids": self.camids.long(), "paths": list(self.paths), "attrs": self.attrs,
                    "splits": self.splits, "meta": self.meta}, path)

    @classmethod
    def load(cls, path: str) -> "Features":
        """A features file, memory-mapped (a large gallery is read as it is used)."""
        try:
            d = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except FileNotFoundError:
            raise FeaturesFileNotFound(f"features file {path} does not exist") from None
        except Exception as e:  # noqa: BLE001 - torch raises several types for files it cannot read
            raise FeaturesFileError(f"{path} is not a readable features file ({type(e).__name__}: {e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise FeaturesFileError(f"{path} is not a features file of format {FORMAT!r} (found {found!r}); "
                             "write one with python -m stafast.embed ... --output F.pt")
        missing = [k for k in ("features", "pids", "camids", "paths", "attrs", "splits", "meta") if k not in d]
        if missing:
            raise FeaturesFileError(f"{path}: features file without {missing}")
        return cls(d["features"], d["pids"], d["camids"], d["paths"], d["attrs"], d["splits"], d["meta"])


def synthetic_features(num_query: int, num_gallery: int, dim: int = 128, per_id: int = 5, cameras: int = 6,
                       latent: int = 16, camera_shift: float = 0.3, noise: float = 0.5, seed: int = 0) -> Features:
    """Features with id structure, for benchmarks and tests.  Gallery tracklet i is person i // per_id
    in a random camera; persons' appearance centres are random in a `latent`-dimensional subspace (as
    learnt embeddings occupy few directions); a tracklet's feature is its person's centre plus its
    camera's offset (norm camera_shift) plus Gaussian noise (norm `noise`), L2-normalised.  Each query
    is one more tracklet of a distinct gallery person.  Split 0: the queries (the rows after the
    gallery) against the gallery."""
    g = torch.Generator().manual_seed(seed)
    ids = -(-num_gallery // per_id)
    if num_query > ids:
        raise ValueError(f"{num_query} queries need as many gallery persons, {num_gallery} / {per_id} -> {ids}")
    unit = torch.nn.functional.normalize
    centres = unit(torch.randn(ids, latent, generator=g) @ torch.randn(latent, dim, generator=g), dim=1)
    shifts = camera_shift * unit(torch.randn(cameras, dim, generator=g), dim=1)
    pids = torch.cat([torch.arange(num_gallery) // per_id, torch.randperm(ids, generator=g)[:num_query]])
    camids = torch.randint(0, cameras, (len(pids),), generator=g)
    feats = centres[pids] + shifts[camids]
    feats += torch.randn(len(pids), dim, generator=g).mul_(noise / dim ** 0.5)
    rows = torch.arange(len(pids))
    return Features(unit(feats, dim=1), pids, camids + 1, [f"synthetic/{i}" for i in range(len(pids))],
                    splits={0: {"query": rows[num_gallery:], "gallery": rows[:num_gallery]}},
                    meta={"dataset": "synthetic-features", "protocol": "official", "seed": seed})
