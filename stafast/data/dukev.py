"""DukeMTMC-VideoReID (Wu et al., CVPR 2018, github.com/Yu-Wu/DukeMTMC-VideoReID) as distributed:

    ROOT/train|query|gallery/PPPP/TTTT/PPPP_Cc_Fffff_Xnnnnn.jpg

PPPP is the person (its folder and the frame names agree), TTTT the tracklet, c the camera
(1-8), ffff the frame's index within the tracklet and nnnnn its frame in the camera's video
(12 fps); `X` marks a normal frame, `D` a distractor's.  Query and gallery are separate folders:
one query tracklet per test id; the gallery holds the 702 test ids' other tracklets and 408
distractor ids that no query shares.  Frames are ordered by ffff.

Compared with torchreid 0.2.5's DukeMTMCVidReID, which reads the same folders:
- torchreid looks a tracklet of n files up as F0001 .. F{n}: one whose indices start at 2 (there
  are such tracklets) or skip a number loses its frames past F{n}, with only a warning (and an
  IndexError when none is found); here every file is kept, in the order of its index.
- torchreid takes the camera of the first file found and 0-based (c - 1); here it is c, and a
  tracklet whose files name two cameras is an error.
- torchreid relabels train ids in set order; here in sorted order (ids 0..701 either way).
"""
from __future__ import annotations

import os
import re

from .datasets import DatasetError, Tracklet, VideoDataset, _need_dir, relabel

SPLITS = ("train", "query", "gallery")
# 0001_C6_F0099_X30823.jpg, or the older 0001C6F0099X30823.jpg that torchreid also accepts
FRAME = re.compile(r"^(\d+)_?C(\d+)_?F(\d+)_?([XD])(\d+)\.jpg$", re.IGNORECASE)


def read_tracklet(folder: str, pid: int) -> Tracklet:
    """The frames of one tracklet folder, ordered by their within-tracklet index."""
    by_index, cameras = {}, set()
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if not name.lower().endswith(".jpg") or not os.path.isfile(path):
            continue
        m = FRAME.match(name)
        if not m:
            raise DatasetError(f"{path}: expected a frame name like 0001_C6_F0099_X30823.jpg "
                               "(person, camera, frame in the tracklet, frame in the video)")
        if int(m[1]) != pid:
            raise DatasetError(f"{path}: person {int(m[1])} in the name, but it is in the folder of person {pid}")
        index = int(m[3])
        if index in by_index:
            raise DatasetError(f"{folder}: frames {by_index[index]} and {name} have the same index F{index:04d}")
        by_index[index] = name
        cameras.add(int(m[2]))
    if not by_index:
        raise DatasetError(f"tracklet folder {folder} holds no frames (*.jpg)")
    if len(cameras) > 1:
        raise DatasetError(f"tracklet folder {folder} names cameras {sorted(cameras)}; a tracklet is seen by one")
    return Tracklet(tuple(os.path.join(folder, by_index[i]) for i in sorted(by_index)), pid, cameras.pop())


def read_split(root: str, split: str) -> list[Tracklet]:
    """Every tracklet of ROOT/split/PPPP/TTTT/, persons and tracklets in sorted folder order."""
    base = _need_dir(os.path.join(root, split), f"DukeMTMC-VideoReID {split} folder")
    out = []
    for person in sorted(os.listdir(base)):
        pdir = os.path.join(base, person)
        if not os.path.isdir(pdir):
            continue  # .DS_Store and the like
        if not person.isdigit():
            raise DatasetError(f"{pdir}: a person folder is named by its id, like 0001")
        out += [read_tracklet(os.path.join(pdir, t), int(person)) for t in sorted(os.listdir(pdir))
                if os.path.isdir(os.path.join(pdir, t))]
    if not out:
        raise DatasetError(f"{base} holds no tracklet folders PPPP/TTTT/ (is --root the folder holding "
                           f"{'/, '.join(SPLITS)}/?)")
    return out


class DukeV(VideoDataset):
    name = "dukev"
    PROTOCOLS = ("toolbox", "official")

    def __init__(self, root: str):
        self.root = root
        train, self.query, self.gallery = (read_split(root, s) for s in SPLITS)
        self.train, self.num_train_pids = relabel(train)
