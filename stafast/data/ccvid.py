"""CCVID (Gu et al., "Clothes-Changing Person Re-identification with RGB Modality Only", CVPR 2022,
github.com/guxinqian/Simple-CCReID) as distributed:

    ROOT/train.txt, query.txt, gallery.txt        lines `session1/001_01 1 u1_l1_s1_c1_a1`
    ROOT/session1|2|3/PPP_WW/*.jpg                one folder of frames per tracklet

A line names the tracklet folder (session, then person PPP and walk WW), the person id and a
clothes label (the person's outfit; a tracklet's clothes id is its (person, label) pair).
Frames are ordered by the number in their names.

Camera ids are not recorded.  As Simple-CCReID derives them, the camera is the walk number WW,
plus 12 in session3: sessions 1 and 2 share ids 1-12, session 3 has 13-24.  Same-camera junk
removal (every protocol removes the query's person seen by the query's camera) therefore removes
the query person's tracklets with the same walk number in session 1 or 2, whether or not it is
the same recording: a session-2 walk 3 gallery tracklet of a session-1 walk 3 query, possibly in
other clothes, is never counted, neither as a match nor as a miss.  Session 3 never collides
with sessions 1 and 2.
"""
from __future__ import annotations

import os
import re

from .datasets import (DatasetError, Tracklet, VideoDataset, _need_dir, _sorted_frames, clothes_labels, integer,
                       read_rows, relabel)

SPLITS = ("train", "query", "gallery")
FOLDER = re.compile(r"^(session\d+)/(\d+)_(\d+)$")
EXAMPLE = "session1/001_01 1 u1_l1_s1_c1_a1"
SESSION3_OFFSET = 12


def camera(folder: str) -> int:
    """The derived camera id of a tracklet folder session/PPP_WW (see the module doc)."""
    session, _, walk = FOLDER.match(folder).groups()
    return int(walk) + (SESSION3_OFFSET if session == "session3" else 0)


def read_list(root: str, split: str) -> list[tuple[str, int, str, str]]:
    """(folder, person id, clothes label, "FILE line N") of each line of ROOT/split.txt."""
    path = os.path.join(root, f"{split}.txt")
    out = []
    for line, (folder, pid, clothes) in read_rows(path, f"CCVID {split} list", 3, EXAMPLE):
        folder = folder.strip("/")
        if not FOLDER.match(folder):
            raise DatasetError(f"{path} line {line}: tracklet folder {folder!r} is not session<k>/<person>_<walk> "
                               f"like {EXAMPLE.split()[0]}")
        out.append((folder, integer(pid, path, line, "the person id"), clothes, f"{path} line {line}"))
    return out


def tracklets(root: str, rows: list[tuple[str, int, str, str]]) -> list[Tracklet]:
    clothes = clothes_labels([(pid, label) for _, pid, label, _ in rows])
    return [Tracklet(_sorted_frames(_need_dir(os.path.join(root, folder), f"CCVID tracklet folder ({where})")),
                     pid, camera(folder), {"clothes": c})
            for (folder, pid, _, where), c in zip(rows, clothes)]


class CCVID(VideoDataset):
    name = "ccvid"
    PROTOCOLS = ("general", "same-clothes", "clothes-changing")

    def __init__(self, root: str):
        self.root = root
        train, query, gallery = (read_list(root, s) for s in SPLITS)
        self.train, self.num_train_pids = relabel(tracklets(root, train))
        test = tracklets(root, query + gallery)  # one clothes labelling for query and gallery
        self.query, self.gallery = test[:len(query)], test[len(query):]
