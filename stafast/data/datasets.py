"""The video re-ID benchmarks, read from their published layouts (see shared/data/README.md).

Each dataset has `.train`, `.query` and `.gallery`: lists of `Tracklet` (frame paths in temporal
order, person id, camera id, and the attributes some protocols compare, e.g. clothes ids).  Train
person ids are relabelled 0..C-1 (`num_train_pids`); query/gallery keep the original ids, which
is what evaluation compares.  A dataset's PROTOCOLS are the stafast.metrics protocols it supports.

- MARS(root, protocol="official"|"toolbox"|"gallery+query"): bbox_train/, bbox_test/, info/.
  official: gallery = all 12,180 test tracklets (the MARS authors' package);
  toolbox: the 9,330 that are neither queries nor junk (pid -1), as common re-ID toolboxes do;
  gallery+query: the 1,980 queries followed by those 9,330, as AP3D, TKP and SINet evaluate.
- DukeV, LSVID, MEVID, CCVID: in dukev.py, lsvid.py, mevid.py, ccvid.py.
- ILIDSVID(root, split): i-LIDS-VID/sequences/cam1|cam2/personNNN/*.png and
  "train-test people splits/train_test_splits_ilidsvid.mat" (ls_set, 1-based, first half test).
- PRID2011(root, split, split_file=None): prid_2011/multi_shot/cam_a|cam_b/person_NNNN/NNNN.png
  and splits_prid2011.json (default: ROOT/splits_prid2011.json).
Query = first camera, gallery = second camera for iLIDS-VID and PRID2011.
Tracklets stored as video files (`VideoTracklet`, listed by a manifest) are in manifest.py.

A missing or malformed file raises DatasetError naming the file and what was expected.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError


class DatasetError(UserError, ValueError):
    """A dataset file is missing or not what the layout says it should be."""


@dataclass(frozen=True)
class Tracklet:
    frames: tuple[str, ...]  # image paths, in temporal order
    pid: int
    camid: int
    # per-tracklet labels some protocols compare (CCVID/MEVID "clothes", MEVID "location", "scale")
    attrs: Mapping[str, int] = field(default_factory=dict, hash=False)

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(frozen=True)
class VideoTracklet:
    """A tracklet stored as one video file: frames 0..num_frames-1 in presentation order.

    num_frames is the count the container declares; `readable` counts the leading frames whose
    data the file holds (fewer when it was truncated; the pipelines stop at, or replace, the
    frames past them).  codec: FFmpeg's name of the stream's codec (vp9, mjpeg, h264, ...)."""
    path: str
    num_frames: int
    pid: int
    camid: int
    codec: str = ""
    readable: int | None = None  # None: all num_frames
    attrs: Mapping[str, int] = field(default_factory=dict, hash=False)

    def __post_init__(self):
        if self.readable is None:
            object.__setattr__(self, "readable", self.num_frames)

    def __len__(self) -> int:
        return self.num_frames


def is_video(tracklets) -> bool:
    """Whether `tracklets` are video files (True) or folders of frames (False); a mix raises."""
    kinds = {isinstance(t, VideoTracklet) for t in tracklets}
    if len(kinds) > 1:
        raise ValueError("a plan's tracklets must be all video files or all folders of frames, not a mix")
    return kinds == {True}


def _need_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise DatasetError(f"missing {what}: {path} does not exist")
    return path


def _need_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise DatasetError(f"missing {what}: directory {path} does not exist")
    return path


def load_mat_var(path: str, var: str, ncols: int | None = None) -> np.ndarray:
    """An integer matrix from a .mat file, checked: variable present, integer dtype, column count."""
    import scipy.io
    _need_file(path, f"MATLAB file with variable '{var}'")
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # noqa: BLE001 - scipy raises several types for bad files
        raise DatasetError(f"{path} is not a readable .mat file ({type(e).__name__}: {e})") from None
    if var not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{path} has no variable '{var}' (found {found})")
    arr = np.asarray(mat[var])
    if not np.issubdtype(arr.dtype, np.integer) and not (
            np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
        raise DatasetError(f"{path}: variable '{var}' must hold integers, got dtype {arr.dtype}")
    if ncols is not None and (arr.ndim != 2 or arr.shape[1] != ncols):
        raise DatasetError(f"{path}: variable '{var}' must have shape (n, {ncols}), got {arr.shape}")
    return arr.astype(np.int64)


def relabel(tracklets: list[Tracklet]) -> tuple[list[Tracklet], int]:
    """Map the ids of `tracklets` to 0..C-1 (sorted original order)."""
    ids = sorted({t.pid for t in tracklets})
    index = {pid: i for i, pid in enumerate(ids)}
    return [dataclasses.replace(t, pid=index[t.pid]) for t in tracklets], len(ids)


def read_rows(path: str, what: str, fields: int, example: str) -> list[tuple[int, list[str]]]:
    """The non-empty lines of a whitespace-separated list file as (line number, fields), each
    line checked to hold exactly `fields` fields (`example` shows one in the error)."""
    _need_file(path, what)
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != fields:
                raise DatasetError(f"{path} line {n}: {len(parts)} fields in {line.strip()!r}, expected {fields} "
                                   f"like {example!r}")
            rows.append((n, parts))
    if not rows:
        raise DatasetError(f"{path} is empty: expected the {what}, lines like {example!r}")
    return rows


def integer(value: str, path: str, line: int, field: str) -> int:
    """`value` as an int (an integral float such as '12.0' too), or DatasetError naming the field."""
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not math.isfinite(number) or number != int(number):
        raise DatasetError(f"{path} line {line}: {field} must be an integer, got {value!r}")
    return int(number)


def clothes_labels(keys: list[tuple[int, object]]) -> list[int]:
    """A clothes id for each (person, clothes label) pair: its rank among the distinct pairs, so
    that two tracklets wear the same clothes exactly when person and label agree."""
    index = {k: i for i, k in enumerate(sorted(set(keys)))}
    return [index[k] for k in keys]


def attribute_arrays(tracklets, names) -> dict[str, np.ndarray]:
    """{name: (T,) int64 array} of the per-tracklet attributes `names` (Tracklet.attrs)."""
    out = {}
    for name in names:
        missing = [i for i, t in enumerate(tracklets) if name not in t.attrs]
        if missing:
            raise ValueError(f"tracklet {missing[0]} (of {len(tracklets)}) has no attribute {name!r}; "
                             f"it has {sorted(tracklets[missing[0]].attrs)}")
        out[name] = np.array([t.attrs[name] for t in tracklets], dtype=np.int64)
    return out


class VideoDataset:
    train: list[Tracklet]
    query: list[Tracklet]
    gallery: list[Tracklet]
    num_train_pids: int
    name = "video"
    # the evaluation protocols (stafast.metrics) its query and gallery support
    PROTOCOLS: tuple[str, ...] = ("official", "toolbox")
    ATTRIBUTE_HINTS: dict[str, str] = {}  # attribute -> where it comes from, for the error when it is missing

    def summary(self) -> str:
        def ids(ts):
            return len({t.pid for t in ts})
        return (f"{self.name}: train {len(self.train)} tracklets / {ids(self.train)} ids, "
                f"query {len(self.query)} / {ids(self.query)} ids, gallery {len(self.gallery)} / {ids(self.gallery)} ids")


# ----------------------------------------------------------------------------------------- MARS
MARS_NAME = re.compile(r"^(\d{4}|00-1)C(\d)T(\d{4})F(\d{3})\.jpg$")


class MARS(VideoDataset):
    name = "mars"
    PROTOCOLS = ("official", "toolbox", "gallery+query")

    def __init__(self, root: str, protocol: str = "official", check_files: bool = True):
        if protocol not in self.PROTOCOLS:
            raise ValueError(f"MARS protocol must be one of {self.PROTOCOLS}, got {protocol!r}")
        self.root, self.protocol = root, protocol
        info = _need_dir(os.path.join(root, "info"), "MARS info folder")
        train_names = self._names(os.path.join(info, "train_name.txt"))
        test_names = self._names(os.path.join(info, "test_name.txt"))
        train_rows = load_mat_var(os.path.join(info, "tracks_train_info.mat"), "track_train_info", 4)
        test_rows = load_mat_var(os.path.join(info, "tracks_test_info.mat"), "track_test_info", 4)
        query_idx = load_mat_var(os.path.join(info, "query_IDX.mat"), "query_IDX").ravel() - 1
        if len(query_idx) and (query_idx.min() < 0 or query_idx.max() >= len(test_rows)):
            raise DatasetError(f"{os.path.join(info, 'query_IDX.mat')}: query_IDX must be 1-based rows of "
                               f"track_test_info (1..{len(test_rows)}), got range "
                               f"[{query_idx.min() + 1}, {query_idx.max() + 1}]")
        train = self._tracklets(train_rows, train_names, "bbox_train", "tracks_train_info.mat", check_files)
        test = self._tracklets(test_rows, test_names, "bbox_test", "tracks_test_info.mat", check_files)
        self.train, self.num_train_pids = relabel(train)
        self.query = [test[i] for i in query_idx]
        is_query = np.zeros(len(test), dtype=bool)
        is_query[query_idx] = True
        toolbox = [t for t, q in zip(test, is_query) if not q and t.pid != -1]
        # the gallery each protocol ranks: all 12,180 test tracklets; the 9,330 neither queries nor
        # junk; those with the 1,980 queries put back in front (as AP3D / SINet concatenate them)
        self.gallery = {"official": test, "toolbox": toolbox, "gallery+query": self.query + toolbox}[protocol]

    @staticmethod
    def _names(path: str) -> list[str]:
        _need_file(path, "MARS name list")
        with open(path) as f:
            names = [line.strip() for line in f if line.strip()]
        for i, n in enumerate(names[:1] + names[-1:]):
            if not MARS_NAME.match(n):
                raise DatasetError(f"{path}: line {1 if i == 0 else len(names)} is {n!r}, expected an image name "
                                   "like 0001C1T0001F001.jpg")
        return names

    def _tracklets(self, rows, names, folder, mat_name, check_files) -> list[Tracklet]:
        out = []
        base = os.path.join(self.root, folder)
        if check_files:
            _need_dir(base, f"MARS image folder {folder}")
        for i, (start, end, pid, cam) in enumerate(rows):
            if not 1 <= start <= end <= len(names):
                raise DatasetError(f"{mat_name} row {i + 1}: frames [{start}, {end}] are outside the name list "
                                   f"(1..{len(names)} lines)")
            frames = names[start - 1:end]
            m = MARS_NAME.match(frames[0])
            if not m or int(m.group(1).replace("00-1", "-1")) != pid or int(m.group(2)) != cam:
                raise DatasetError(f"{mat_name} row {i + 1}: pid {pid} camera {cam} disagree with its first frame "
                                   f"{frames[0]!r}")
            paths = tuple(os.path.join(base, f[:4], f) for f in frames)
            if check_files:  # first and last frame: cheap, and catches a missing tracklet folder
                for p in (paths[0], paths[-1]):
                    if not os.path.isfile(p):
                        raise DatasetError(f"{mat_name} row {i + 1} (pid {pid}, camera {cam}): frame {p} is missing")
            out.append(Tracklet(paths, int(pid), int(cam)))
        return out


# ------------------------------------------------------------------------------------ iLIDS-VID
def _sorted_frames(folder: str, exts=(".png", ".jpg", ".jpeg")) -> tuple[str, ...]:
    """Frame files of a sequence folder, sorted by the integer frame number at the end of the name."""
    files = [f for f in os.listdir(folder) if f.lower().endswith(exts)]
    if not files:
        raise DatasetError(f"sequence folder {folder} holds no images ({'/'.join(exts)})")

    def number(name: str) -> int:
        m = re.search(r"(\d+)\D*$", os.path.splitext(name)[0])
        if not m:
            raise DatasetError(f"frame {os.path.join(folder, name)} has no frame number in its name")
        return int(m.group(1))
    return tuple(os.path.join(folder, f) for f in sorted(files, key=number))


def camera_tracklets(cams: list[str], persons: list[str], which: tuple[int, ...], what: str) -> list[Tracklet]:
    """One tracklet per person folder in each camera of `which` (camera ids 1-based); the person id
    is the number in the folder name (person012 -> 12, person_0012 -> 12)."""
    out = []
    for p in persons:
        pid = int(re.sub(r"\D", "", p))
        for c in which:
            folder = _need_dir(os.path.join(cams[c], p), f"{what} sequence of {p}")
            out.append(Tracklet(_sorted_frames(folder), pid, c + 1))
    return out


class ILIDSVID(VideoDataset):
    name = "ilidsvid"
    SPLIT_FILE = os.path.join("train-test people splits", "train_test_splits_ilidsvid.mat")

    def __init__(self, root: str, split: int = 0):
        seq = _need_dir(os.path.join(root, "i-LIDS-VID", "sequences"), "iLIDS-VID sequences folder")
        cams = [_need_dir(os.path.join(seq, c), f"iLIDS-VID camera folder {c}") for c in ("cam1", "cam2")]
        persons = sorted(d for d in os.listdir(cams[0]) if d.startswith("person"))
        splits_path = os.path.join(root, self.SPLIT_FILE)
        ls_set = load_mat_var(splits_path, "ls_set")
        if ls_set.ndim != 2 or ls_set.shape[1] != len(persons):
            raise DatasetError(f"{splits_path}: ls_set must be (splits, {len(persons)}) for the {len(persons)} person "
                               f"folders of {cams[0]}, got {ls_set.shape}")
        if not 0 <= split < len(ls_set):
            raise ValueError(f"iLIDS-VID split must be in 0..{len(ls_set) - 1}, got {split}")
        order = ls_set[split] - 1
        half = len(persons) // 2
        test_persons = [persons[i] for i in order[:half]]
        train_persons = [persons[i] for i in order[half:]]
        self.split = split
        self.train, self.num_train_pids = relabel(camera_tracklets(cams, train_persons, (0, 1), self.name))
        self.query = camera_tracklets(cams, test_persons, (0,), self.name)
        self.gallery = camera_tracklets(cams, test_persons, (1,), self.name)


# ------------------------------------------------------------------------------------- PRID2011
class PRID2011(VideoDataset):
    name = "prid2011"

    def __init__(self, root: str, split: int = 0, split_file: str | None = None):
        base = _need_dir(os.path.join(root, "prid_2011", "multi_shot"), "PRID2011 multi_shot folder")
        cams = [_need_dir(os.path.join(base, c), f"PRID2011 camera folder {c}") for c in ("cam_a", "cam_b")]
        split_file = split_file or os.path.join(root, "splits_prid2011.json")
        _need_file(split_file, "PRID2011 split file (a JSON list of {'train': [...], 'test': [...]})")
        try:
            splits = json.load(open(split_file))
            train_persons, test_persons = splits[split]["train"], splits[split]["test"]
        except IndexError:
            raise ValueError(f"PRID2011 split must be in 0..{len(splits) - 1}, got {split}") from None
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{split_file}: expected a JSON list of {{'train': [...], 'test': [...]}} "
                               f"({type(e).__name__}: {e})") from None
        self.split = split
        self.train, self.num_train_pids = relabel(camera_tracklets(cams, train_persons, (0, 1), self.name))
        self.query = camera_tracklets(cams, test_persons, (0,), self.name)
        self.gallery = camera_tracklets(cams, test_persons, (1,), self.name)

