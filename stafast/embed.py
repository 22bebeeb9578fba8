"""Embed tracklets: a folder of frames (or a video file) per tracklet -> L2-normalised embeddings.

    python -m stafast.embed --checkpoint runs/mars/checkpoint.pt DIR_OR_VIDEO [...] --output emb.npy
    python -m stafast.embed --checkpoint C --output emb.pt --all-frames people/*/

.npy: a (T, D) float32 array, with the inputs' names in OUTPUT.names.txt (one per line, same
order); .pt: {"embeddings": (T, D) tensor, "names": [...]}.  Frames of a folder are ordered by
the integer frame number in their names; a video file is decoded with PyAV and
its frames written to a temporary folder first (video needs PyAV: pip install av).  Test sampling by default (first frame of each
of N chunks); --all-frames averages every clip of N consecutive frames.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch

from .data import DatasetError, Tracklet
from .data.datasets import _sorted_frames
from .checkpoint import load_model
from .evaluate import HelpFormatter, extract

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm")


def video_to_frames(path: str, folder: str) -> tuple[str, ...]:
    """Decode a video file with PyAV into PNG frames in `folder`."""
    from PIL import Image
    try:
        import av
    except ImportError:
        raise DatasetError(f"cannot decode video {path}: PyAV is not installed (pip install av), "
                           "or pass a folder of frames") from None
    out = []
    try:
        with av.open(path) as container:
            for i, frame in enumerate(container.decode(video=0)):
                out.append(os.path.join(folder, f"{i:06d}.png"))
                Image.fromarray(frame.to_ndarray(format="rgb24")).save(out[-1])
    except av.FFmpegError as e:
        raise DatasetError(f"cannot decode video {path}: {e}") from None
    if not out:
        raise DatasetError(f"video {path} has no frames")
    return tuple(out)


def tracklets_from(inputs: list[str], scratch: str) -> list[Tracklet]:
    tracklets = []
    for i, path in enumerate(inputs):
        if os.path.isdir(path):
            frames = _sorted_frames(path)
        elif os.path.isfile(path) and path.lower().endswith(VIDEO_EXTS):
            folder = os.path.join(scratch, f"video{i}")
            os.makedirs(folder)
            frames = video_to_frames(path, folder)
        else:
            raise DatasetError(f"{path} is neither a folder of frames nor a video file ({', '.join(VIDEO_EXTS)})")
        tracklets.append(Tracklet(frames, -1, 0))
    return tracklets


def main(argv=None) -> np.ndarray:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="+", help="folders of frames or video files, one tracklet each")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--output", required=True, help=".npy or .pt")
    p.add_argument("--all-frames", action="store_true")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    if not a.output.endswith((".npy", ".pt")):
        p.error(f"--output must end with .npy or .pt, got {a.output}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, state = load_model(a.checkpoint, device)
    cfg = state["config"]
    with tempfile.TemporaryDirectory() as scratch:
        tracklets = tracklets_from(a.inputs, scratch)
        feats, _, _ = extract(model, tracklets, cfg.frames, cfg.height, cfg.width, batch_size=a.batch_size,
                              all_frames=a.all_frames, pipeline="torch", workers=a.workers, device=device)
    names = [os.path.normpath(x) for x in a.inputs]
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    if a.output.endswith(".npy"):
        np.save(a.output, feats.numpy().astype(np.float32))
        with open(a.output + ".names.txt", "w") as f:
            f.write("\n".join(names) + "\n")
    else:
        torch.save({"embeddings": feats, "names": names}, a.output)
    print(f"wrote {len(names)} embeddings of size {feats.shape[1]} to {a.output}")
    return feats.numpy()


if __name__ == "__main__":
    main()
