"""LS-VID (Li et al., "Global-Local Temporal Representations", ICCV 2019) as distributed:

    ROOT/list_sequence/list_seq_train.txt, list_seq_test.txt    (some copies: ROOT/info/list_sequence/)
    ROOT/test/data/info_test.mat                                (some copies: ROOT/info/data/)
    ROOT/tracklet_train/PPPP/..., ROOT/tracklet_test/PPPP/...

Each list line is `PREFIX PID`: PREFIX (relative to ROOT, e.g. tracklet_test/0042/0042_0003_07)
names the tracklet, whose frames are the files PREFIX_<frame number>.jpg of its folder; the
camera (1-15) is the third `_`-separated field of the name, as the public loaders (SINet,
BiCnet-TKS) read it.  info_test.mat is a MATLAB v7.3 file (HDF5), read with h5py: its variable
`query` holds the 1-based lines of list_seq_test.txt that are queries; the gallery is the other
test lines (as SINet and BiCnet-TKS evaluate), without junk (pid -1) lines.  Frames are ordered
by their frame number.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict

import numpy as np

from ..extras import require
from .datasets import DatasetError, Tracklet, VideoDataset, _need_dir, integer, read_rows, relabel

LIST_DIRS = ("list_sequence", os.path.join("info", "list_sequence"))
QUERY_FILES = (os.path.join("test", "data", "info_test.mat"), os.path.join("info", "data", "info_test.mat"))
FRAME = re.compile(r"^(.+)_(\d+)\.(jpg|png)$", re.IGNORECASE)
EXAMPLE = "tracklet_train/0001/0001_0001_03 1"


def find(root: str, candidates: tuple[str, ...], what: str) -> str:
    """The first of ROOT/candidates that exists; DatasetError naming them all when none does."""
    for c in candidates:
        if os.path.exists(os.path.join(root, c)):
            return os.path.join(root, c)
    raise DatasetError(f"missing {what}: none of {', '.join(os.path.join(root, c) for c in candidates)} exists")


def read_query_index(path: str, num_test: int) -> np.ndarray:
    """0-based test-list rows of the queries, from variable `query` of the v7.3 info_test.mat."""
    h5py = require("h5py", "hdf5", f"reading LS-VID's {path} (MATLAB v7.3, HDF5)")
    if not h5py.is_hdf5(path):
        raise DatasetError(f"{path} is not a MATLAB v7.3 (HDF5) file: expected LS-VID's info_test.mat with "
                           "the variable 'query'")
    with h5py.File(path, "r") as f:
        if not isinstance(f.get("query"), h5py.Dataset):
            raise DatasetError(f"{path} has no numeric variable 'query' (found {sorted(f)})")
        query = np.asarray(f["query"][()])
    if query.ndim > 2 or (query.ndim == 2 and min(query.shape) != 1) or not np.issubdtype(query.dtype, np.number):
        raise DatasetError(f"{path}: 'query' must be a vector of line numbers, got {query.dtype} {query.shape}")
    query = query.ravel()
    if not query.size:
        raise DatasetError(f"{path}: 'query' is empty; expected the 1-based lines of list_seq_test.txt that are queries")
    if not np.all(query == np.round(query)) or query.min() < 1 or query.max() > num_test:
        raise DatasetError(f"{path}: 'query' must hold 1-based lines of list_seq_test.txt (1..{num_test}), got "
                           f"values in [{query.min()}, {query.max()}]")
    return query.astype(np.int64) - 1


class FrameIndex:
    """The frames of each tracklet prefix, listing every person folder once (a folder holds all of
    its person's tracklets: one listing per tracklet would read it many times)."""

    def __init__(self, root: str):
        self.root = root
        self.folders: dict[str, dict[str, list[tuple[int, str]]]] = {}

    def frames(self, prefix: str, where: str) -> tuple[str, ...]:
        folder, stem = os.path.split(os.path.join(self.root, prefix.rstrip("_")))
        if folder not in self.folders:
            _need_dir(folder, f"LS-VID tracklet folder ({where})")
            groups = defaultdict(list)
            for name in os.listdir(folder):
                m = FRAME.match(name)
                if m:
                    groups[m[1]].append((int(m[2]), name))
            self.folders[folder] = groups
        found = sorted(self.folders[folder].get(stem, ()))
        if not found:
            raise DatasetError(f"{where} names tracklet {prefix}, but {folder} holds no frames {stem}_<number>.jpg")
        return tuple(os.path.join(folder, name) for _, name in found)


def read_list(path: str, index: FrameIndex) -> list[Tracklet]:
    out = []
    for line, (prefix, pid) in read_rows(path, "LS-VID tracklet list", 2, EXAMPLE):
        where = f"{path} line {line}"
        fields = os.path.basename(prefix.rstrip("_")).split("_")
        if len(fields) < 3 or not fields[2].isdigit():
            raise DatasetError(f"{where}: tracklet {prefix!r} has no camera field; expected names like "
                               f"{EXAMPLE.split()[0]} (person_tracklet_camera)")
        out.append(Tracklet(index.frames(prefix, where), integer(pid, path, line, "the person id"), int(fields[2])))
    return out


class LSVID(VideoDataset):
    name = "lsvid"
    PROTOCOLS = ("toolbox", "official")

    def __init__(self, root: str):
        self.root = root
        lists = find(root, LIST_DIRS, "LS-VID list folder list_sequence/")
        index = FrameIndex(root)
        train = read_list(os.path.join(lists, "list_seq_train.txt"), index)
        test = read_list(os.path.join(lists, "list_seq_test.txt"), index)
        query = read_query_index(find(root, QUERY_FILES, "LS-VID query index info_test.mat"), len(test))
        is_query = np.zeros(len(test), dtype=bool)
        is_query[query] = True
        self.train, self.num_train_pids = relabel(train)
        self.query = [test[i] for i in query]
        self.gallery = [t for t, q in zip(test, is_query) if not q and t.pid != -1]
