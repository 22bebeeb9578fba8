"""Embed tracklets into L2-normalised features: folders of frames or video files, or a dataset's
query and gallery.

    python -m stafast.embed --checkpoint C DIR_OR_VIDEO [...] --output emb.pt     # or emb.npy
    python -m stafast.embed --checkpoint C --output emb.pt --all-frames people/*/
    python -m stafast.embed --checkpoint C --dataset D --root R [--split S|all] --output F.pt
    torchrun --nproc_per_node G -m stafast.embed ...                              # G processes

.pt: a features file (stafast.features: features, pids, camids, paths, attrs, splits, meta; read
it with stafast.features.Features.load or torch.load(F, weights_only=True)).  Inputs get pid -1,
camera 0 and no split (named by the input, or FOLDER/0001C1T0001 for each MARS tracklet of a folder
holding several); a dataset's splits hold the row indices of their query and gallery, every
distinct tracklet embedded once (--split all of iLIDS-VID / PRID2011: the 10 splits).  .npy
(inputs only): a (T, D) float32 array, with the tracklets' names in OUTPUT.names.txt (one per line,
same order).  Frames of a folder are ordered by the integer frame number in their names; a folder
holding several MARS tracklets (a MARS person folder: 0001C1T0001F001.jpg ... 0001C2T0003F012.jpg)
gives one embedding per tracklet (person, camera and tracklet fields).  A video
file (.mp4 .avi .mkv .mov .webm) is one tracklet whose frame count is read from its container
(needs PyAV: pip install av); its sampled frames are decoded by DALI's video decoder when DALI is
installed (NVDEC on a GPU; VP8, VP9 and MJPEG on the CPU) and by PyAV otherwise (see --pipeline).
Test sampling by default (first frame of each of N chunks); --all-frames averages every clip of N
consecutive frames (torch path).  Under torchrun every process embeds a share of the tracklets and
process 0 writes the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from . import cli
from .checkpoint import load_model
from .cli import option
from .data import DatasetError, Tracklet, default_protocol
from .data.datasets import MARS_NAME, _sorted_frames
from .data.video import VIDEO_EXTS, video_tracklet
from .distributed import setup_distributed
from .evaluate import DatasetOptions, amp_dtype, extract, features_from_model
from .features import Features


def tracklets_from(inputs: list[str]) -> tuple[list, list[str]]:
    """A Tracklet per folder of frames or VideoTracklet per video file (pid -1, camera 0), and its
    name: the input, or for a folder that holds several MARS tracklets (frames named like
    0001C1T0001F001.jpg: person, camera, tracklet, frame) one per tracklet, named FOLDER/0001C1T0001."""
    tracklets, names = [], []
    for path in inputs:
        if os.path.isdir(path):
            for name, frames in folder_tracklets(path):
                tracklets.append(Tracklet(frames, -1, 0))
                names.append(name)
        elif os.path.isfile(path) and path.lower().endswith(VIDEO_EXTS):
            tracklets.append(video_tracklet(path))
            names.append(os.path.normpath(path))
        else:
            raise DatasetError(f"{path} is neither a folder of frames nor a video file ({', '.join(VIDEO_EXTS)})")
    return tracklets, names


def folder_tracklets(folder: str) -> list[tuple[str, tuple[str, ...]]]:
    """The folder's frames as one tracklet, or as one per MARS tracklet (person, camera and
    tracklet fields of the frame names) when all frames have MARS names and these name several."""
    frames = _sorted_frames(folder)
    fields = [MARS_NAME.match(os.path.basename(f)) for f in frames]
    groups: dict[str, list[str]] = {}
    for f, m in zip(frames, fields):
        groups.setdefault(f"{m[1]}C{m[2]}T{m[3]}" if m else "", []).append(f)
    folder = os.path.normpath(folder)
    if len(groups) == 1 or "" in groups:
        return [(folder, frames)]
    return [(os.path.join(folder, key), tuple(group)) for key, group in sorted(groups.items())]


def embed(model, tracklets: list, num_frames: int, height: int, width: int, **kwargs) -> torch.Tensor:
    """(T, D) embeddings of `tracklets`, in order (extract's keywords); folders of frames and video
    files are extracted separately (a pipeline reads one kind), then put back in the inputs' order."""
    feats = torch.empty(0)
    groups: dict[bool, list[int]] = {}
    for i, t in enumerate(tracklets):
        groups.setdefault(isinstance(t, Tracklet), []).append(i)
    for rows in groups.values():
        f, _, _ = extract(model, [tracklets[i] for i in rows], num_frames, height, width, **kwargs)
        if not feats.numel():
            feats = f.new_empty(len(tracklets), f.shape[1])
        feats[rows] = f
    return feats


def inputs_features(a: "EmbedConfig", device: torch.device) -> Features:
    """The features of the folders / video files given, one tracklet each."""
    model, state = load_model(a.checkpoint, str(device))
    cfg = state["config"]
    tracklets, names = tracklets_from(a.inputs)
    if len(names) > len(a.inputs):
        print(f"the frame names of the folders give {len(names)} MARS tracklets (person, camera, tracklet): "
              f"one embedding each, named like {names[0]}")
    feats = embed(model, tracklets, cfg.frames, cfg.height, cfg.width, batch_size=a.batch_size,
                  all_frames=a.all_frames, pipeline=a.pipeline, workers=a.workers, device=str(device),
                  amp_dtype=amp_dtype(a.amp, device), distributed=True)
    return Features(feats, torch.tensor([t.pid for t in tracklets]), torch.tensor([t.camid for t in tracklets]),
                    names,
                    meta={"checkpoint": a.checkpoint, "all_frames": a.all_frames, "frames": cfg.frames,
                          "height": cfg.height, "width": cfg.width})


@dataclass(kw_only=True)
class EmbedConfig(DatasetOptions):
    inputs: tuple[str, ...] = option((), "folders of frames or video files, one tracklet each (or --dataset)",
                                     positional=True, nargs="*")
    checkpoint: str = option(help="a stafast.train checkpoint.pt")
    output: str = option(help=".pt: a features file; .npy: an array (inputs only)")

    def __post_init__(self):
        if bool(self.inputs) == bool(self.dataset):
            raise ValueError("give folders of frames / video files, or --dataset (one of them)")
        if not self.output.endswith((".npy", ".pt")) or (self.dataset and not self.output.endswith(".pt")):
            raise ValueError(f"--output must end with .pt{'' if self.dataset else ' or .npy'}, got {self.output}")
        if self.dataset:
            self.protocol = self.protocol or default_protocol(self.dataset)


def main(argv=None) -> np.ndarray | None:
    a = cli.parse(EmbedConfig, argv, module="stafast.embed", description=__doc__)
    rank, _, device = setup_distributed()
    try:
        feats = features_from_model(a, device) if a.dataset else inputs_features(a, device)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if rank:  # process 0 writes
        return None
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    if a.output.endswith(".npy"):
        np.save(a.output, feats.features.numpy().astype(np.float32))
        with open(a.output + ".names.txt", "w") as f:
            f.write("\n".join(feats.paths) + "\n")
    else:
        feats.save(a.output)
    splits = f" ({len(feats.splits)} split{'s' if len(feats.splits) > 1 else ''})" if feats.splits else ""
    print(f"wrote {len(feats)} embeddings of size {feats.features.shape[1]}{splits} to {a.output}")
    return feats.features.numpy()


if __name__ == "__main__":
    cli.run(main, "stafast.embed")
