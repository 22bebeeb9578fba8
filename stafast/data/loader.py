"""Clip batches for training and evaluation: the torch DataLoader path and the choice of pipeline.

Every pipeline yields dicts {"clips": float32 (B, N, 3, H, W) normalised with ImageNet
statistics, "pids": (B,), "camids": (B,), "bad_frames": int}; in "all" mode B is the C clips of
one tracklet.  `build_loader(..., pipeline="auto")` uses DALI when it is installed and the torch
DataLoader otherwise; both read the same frames for the same ClipPlan (see plan.py).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .datasets import DatasetError
from .plan import ClipPlan

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB; unreadable files raise DatasetError naming the path."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read frame {path}: {type(e).__name__}: {e}") from None


def read_nearest(frames: tuple[str, ...], i: int) -> tuple[np.ndarray, int]:
    """Frame i of a tracklet or, if it cannot be read, the nearest readable one: (image, its index)."""
    for j in sorted(range(len(frames)), key=lambda j: abs(j - i)):
        try:
            return read_image(frames[j]), j
        except DatasetError:
            continue
    raise DatasetError(f"no frame of the tracklet starting {frames[0]} can be read")


def to_model_input(frames: np.ndarray, height: int, width: int, flip: bool) -> torch.Tensor:
    """(N, H0, W0, 3) uint8 -> (N, 3, height, width) float32: bilinear resize (half-pixel centres, no
    antialias, as DALI's linear resize), optional horizontal flip, ImageNet normalisation."""
    # Read-only arrays (a repeated frame) are copied: torch wants writable memory even to read it.
    x = torch.from_numpy(np.require(frames, requirements="W")).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    if flip:
        x = x.flip(-1)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255
    return (x - mean) / std


class ClipDataset(torch.utils.data.Dataset):
    """Samples of a ClipPlan, decoded with Pillow.  on_error="raise" stops at the first unreadable
    frame with its path; "skip" replaces it by the nearest readable frame of its tracklet and counts it."""

    def __init__(self, plan: ClipPlan, height: int = 256, width: int = 128, on_error: str = "raise"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.plan, self.height, self.width, self.on_error = plan, height, width, on_error
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.plan.order(self.epoch))

    def _frame(self, frames: tuple[str, ...], i: int) -> tuple[np.ndarray, int]:
        if self.on_error == "raise":
            return read_image(frames[i]), 0
        image, j = read_nearest(frames, i)
        return image, int(j != i)

    def __getitem__(self, position: int) -> dict:
        t, idx, flip = self.plan.sample(self.epoch, position)
        loaded = [self._frame(t.frames, int(i)) for i in idx.ravel()]
        shapes = {im.shape for im, _ in loaded}
        if len(shapes) > 1:  # frames of one tracklet with different sizes: bring them to the first one's
            h0, w0 = loaded[0][0].shape[:2]
            loaded = [(np.asarray(Image.fromarray(im).resize((w0, h0), Image.BILINEAR)), b) for im, b in loaded]
        clip = to_model_input(np.stack([im for im, _ in loaded]), self.height, self.width, flip)
        clip = clip.view(*idx.shape, 3, self.height, self.width)
        return {"clips": clip, "pids": t.pid, "camids": t.camid, "bad_frames": sum(b for _, b in loaded)}


def _collate(samples: list[dict]) -> dict:
    if samples[0]["clips"].dim() == 5:  # "all" mode: one tracklet's C clips
        (s,) = samples
        c = s["clips"].shape[0]
        return {"clips": s["clips"], "pids": torch.full((c,), s["pids"]), "camids": torch.full((c,), s["camids"]),
                "bad_frames": s["bad_frames"]}
    return {"clips": torch.stack([s["clips"] for s in samples]),
            "pids": torch.tensor([s["pids"] for s in samples]),
            "camids": torch.tensor([s["camids"] for s in samples]),
            "bad_frames": sum(s["bad_frames"] for s in samples)}


class TorchClipLoader:
    """The torch DataLoader path: `set_epoch(e)`, then iterate."""

    def __init__(self, plan: ClipPlan, batch_size: int, height: int = 256, width: int = 128, workers: int = 2,
                 on_error: str = "raise", drop_last: bool | None = None):
        self.dataset = ClipDataset(plan, height, width, on_error)
        self.batch_size = 1 if plan.mode == "all" else batch_size
        self.drop_last = (plan.mode == "train") if drop_last is None else drop_last
        self.workers = workers
        self.bad_frames = 0

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False,
                                             num_workers=self.workers, collate_fn=_collate, drop_last=self.drop_last,
                                             persistent_workers=False)
        for batch in loader:
            self.bad_frames += batch["bad_frames"]
            yield batch


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        return True
    except ImportError:
        return False


def build_loader(plan: ClipPlan, batch_size: int, height: int = 256, width: int = 128, pipeline: str = "auto",
                 workers: int = 2, on_error: str = "raise", device: str = "cpu", start_epoch: int = 0):
    """A clip loader for `plan`: pipeline "dali", "torch" or "auto" (DALI when installed, except for
    "all" mode, whose variable clip counts per tracklet the torch path handles)."""
    if pipeline not in ("auto", "dali", "torch"):
        raise ValueError(f"pipeline must be 'auto', 'dali' or 'torch', got {pipeline!r}")
    use_dali = pipeline == "dali" or (pipeline == "auto" and dali_available() and plan.mode != "all")
    if use_dali:
        from .dali import DALIClipLoader
        return DALIClipLoader(plan, batch_size, height, width, workers=workers, on_error=on_error, device=device,
                              start_epoch=start_epoch)
    loader = TorchClipLoader(plan, batch_size, height, width, workers, on_error)
    loader.set_epoch(start_epoch)
    return loader
