"""Frames: reading the frames a clip samples and turning them into model input (the ImageNet normalisation).

Both pipelines use these: the torch path (loader.py) decodes with `read_clip` (Pillow for frame
files, PyAV for video files, video.py), the DALI path (dali.py) normalises with the same
constants and names unreadable frames with `read_image`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .datasets import DatasetError, VideoTracklet
from .plan import NO_AUGMENT, ClipAugment
from .video import read_clip as read_video_clip

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, of RGB in [0, 1]
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


def read_clip(t, idx: np.ndarray, on_error: str = "raise") -> tuple[np.ndarray, int]:
    """The frames `idx` of tracklet `t` as (M, H, W, 3) uint8 (M = idx.size, in idx's order), and how
    many were replaced.  on_error="raise" stops at the first unreadable frame with its path; "skip"
    replaces it by the nearest readable frame of its tracklet and counts it (for a video file: the
    frames past the end of a truncated file, see video.readable_indices)."""
    idx = np.asarray(idx).ravel()
    if isinstance(t, VideoTracklet):
        return read_video_clip(t, idx, on_error)
    loaded = []  # (image, replaced)
    for i in map(int, idx):
        if on_error == "raise":
            loaded.append((read_image(t.frames[i]), 0))
        else:
            image, j = read_nearest(t.frames, i)
            loaded.append((image, int(j != i)))
    shapes = {im.shape for im, _ in loaded}
    if len(shapes) > 1:  # frames of one tracklet with different sizes: bring them to the first one's
        h0, w0 = loaded[0][0].shape[:2]
        loaded = [(np.asarray(Image.fromarray(im).resize((w0, h0), Image.BILINEAR)), b) for im, b in loaded]
    return np.stack([im for im, _ in loaded]), sum(b for _, b in loaded)


def to_model_input(frames: np.ndarray, height: int, width: int, augment: ClipAugment = NO_AUGMENT) -> torch.Tensor:
    """(N, H0, W0, 3) uint8 -> (N, 3, height, width) float32: bilinear resize (half-pixel centres, no
    antialias, as DALI's linear resize), the clip's augmentation (plan.py: crop, flip, then erase
    after the ImageNet normalisation), the same for every frame."""
    # Read-only arrays (a repeated frame) are copied: torch wants writable memory even to read it.
    x = torch.from_numpy(np.require(frames, requirements="W")).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    if augment.crop is not None:
        top, left = augment.crop
        pad = max(abs(top), abs(left))
        x = F.pad(x, (pad, pad, pad, pad))[..., pad + top:pad + top + height, pad + left:pad + left + width]
    if augment.flip:
        x = x.flip(-1)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255
    x = (x - mean) / std
    if augment.erase is not None:
        top, left, h, w = augment.erase
        x[..., top:top + h, left:left + w] = 0.0  # the mean colour
    return x


def denormalise(frame: torch.Tensor) -> torch.Tensor:
    """A normalised (3, H, W) frame back to RGB in [0, 1] (for display)."""
    x = frame.detach().float().cpu() * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    return x.clamp(0, 1)
