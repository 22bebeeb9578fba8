"""MEVID (Davila et al., WACV 2023, github.com/Kitware/MEVID) as distributed:

    ROOT/bbox_train/PPPP/*.jpg, ROOT/bbox_test/PPPP/*.jpg        frame chips
    ROOT/train_name.txt, test_name.txt                            one chip name per line
    ROOT/track_train_info.txt, track_test_info.txt                start end person outfit camera
    ROOT/query_IDX.txt                                            rows of track_test_info that are queries
    ROOT/test_track_scale.txt (optional)                          from the Kitware/MEVID code repository

Chip names are PPPPOoooCcccTtttFfffff.jpg (person, outfit, camera, tracklet, frame; e.g.
0201O003C330T004F00192.jpg).  start and end are 0-based, inclusive lines of the name list (the
README's example row `0 9 103 20 424` is ten chips); query_IDX.txt holds 0-based rows of
track_test_info.txt, and the gallery is the other test rows.  The numbers may be written as
floats (numpy.savetxt's 0.000000000000000000e+00): each must be integral.  A row with start >
end holds no chip; the public loaders skip it silently, here it is skipped with a warning.

Per-tracklet attributes for the protocols (stafast.metrics): `clothes`, one id per (person,
outfit); `location`, 0 indoor / 1 outdoor, from the camera as the MEVID code defines it (cameras
329, 330, 507, 508 and 509 are indoor); `scale`, 0 medium / 1 large, from test_track_scale.txt
(`<chip name> m|l` per test tracklet: `l` when the tracklet's mean box size is 96 px or more),
matched to the tracklets by person, outfit, camera and tracklet number.
"""
from __future__ import annotations

import os
import re
import warnings

import numpy as np

from .datasets import (DatasetError, Tracklet, VideoDataset, _need_dir, _need_file, clothes_labels, integer,
                       read_rows, relabel)

NAME = re.compile(r"^(\d{4})O(\d{3})C(\d{3})T(\d{3})F(\d{5})\.jpg$")
STEM = 18  # PPPPOoooCcccTttt + "F": the part of a chip name shared by a tracklet's chips
INDOOR = frozenset({329, 330, 507, 508, 509})  # in_cam of evaluate_with_locations, Kitware/MEVID CAL/tools
SCALES = {"m": 0, "l": 1}
SCALE_FILE = "test_track_scale.txt"
INFO_EXAMPLE = "0 9 103 20 424"


def read_names(path: str) -> list[str]:
    names = [parts[0] for _, parts in read_rows(path, "MEVID chip name list", 1, "0201O003C330T004F00192.jpg")]
    for line, n in ((1, names[0]), (len(names), names[-1])):
        if not NAME.match(n):
            raise DatasetError(f"{path} line {line} is {n!r}, expected a chip name like 0201O003C330T004F00192.jpg")
    return names


def read_info(path: str) -> np.ndarray:
    """(rows, 5) int64: start, end, person, outfit, camera."""
    fields = ("start", "end", "person id", "outfit id", "camera id")
    return np.array([[integer(v, path, line, f) for v, f in zip(parts, fields)]
                     for line, parts in read_rows(path, "MEVID track table", 5, INFO_EXAMPLE)], dtype=np.int64)


def read_scales(path: str) -> dict[str, int]:
    """{chip name stem: scale id} from test_track_scale.txt."""
    scales = {}
    for line, (name, label) in read_rows(path, "MEVID test tracklet scales", 2, "0201O003C330T004F00855.jpg l"):
        if not NAME.match(name) or label not in SCALES:
            raise DatasetError(f"{path} line {line}: expected a chip name and one of {sorted(SCALES)}, got "
                               f"{name!r} {label!r}")
        if scales.setdefault(name[:STEM], SCALES[label]) != SCALES[label]:
            raise DatasetError(f"{path} line {line}: tracklet {name[:STEM - 1]} was given two scales")
    return scales


class MEVID(VideoDataset):
    name = "mevid"
    PROTOCOLS = ("general", "same-clothes", "clothes-changing", "same-location", "changed-location",
                 "same-scale", "changed-scale")
    ATTRIBUTE_HINTS = {"scale": f": copy {SCALE_FILE} of the MEVID code (github.com/Kitware/MEVID) into the root"}

    def __init__(self, root: str):
        self.root = root
        self.skipped: list[str] = []  # rows without chips: "FILE line N"
        train = [t for t in self.read_split("train") if t is not None]
        test = self.read_split("test")
        query_path = os.path.join(root, "query_IDX.txt")
        query = [integer(v, query_path, line, "the query row")
                 for line, parts in read_rows(query_path, "MEVID query rows", 1, "17") for v in parts]
        bad = [q for q in query if not 0 <= q < len(test)]
        if bad:
            raise DatasetError(f"{query_path}: query rows must be 0-based rows of track_test_info.txt "
                               f"(0..{len(test) - 1}), got {bad[0]}")
        self.train, self.num_train_pids = relabel(train)
        self.query = [test[q] for q in query if test[q] is not None]
        chosen = set(query)
        self.gallery = [t for i, t in enumerate(test) if i not in chosen and t is not None]

    def read_split(self, split: str) -> list[Tracklet | None]:
        """The tracklets of track_<split>_info.txt in row order; None for a row without chips."""
        names = read_names(os.path.join(self.root, f"{split}_name.txt"))
        info_path = os.path.join(self.root, f"track_{split}_info.txt")
        rows = read_info(info_path)
        base = _need_dir(os.path.join(self.root, f"bbox_{split}"), f"MEVID chip folder bbox_{split}")
        scale_path = os.path.join(self.root, SCALE_FILE)
        scales = read_scales(scale_path) if split == "test" and os.path.isfile(scale_path) else None
        clothes = clothes_labels([(p, o) for _, _, p, o, _ in rows])
        out = []
        for i, (start, end, pid, outfit, cam) in enumerate(rows.tolist()):
            where = f"{info_path} line {i + 1}"
            if start > end:
                warnings.warn(f"{where}: start {start} > end {end}, a tracklet without chips: skipped", stacklevel=2)
                self.skipped.append(where)
                out.append(None)
                continue
            frames = self.chips(names, start, end, (pid, outfit, cam), where)
            attrs = {"clothes": clothes[i], "location": int(cam not in INDOOR)}
            if scales is not None:
                if frames[0][:STEM] not in scales:
                    raise DatasetError(f"{scale_path} has no row for tracklet {frames[0][:STEM - 1]} ({where})")
                attrs["scale"] = scales[frames[0][:STEM]]
            paths = tuple(os.path.join(base, n[:4], n) for n in frames)
            for p in (paths[0], paths[-1]):  # cheap, and catches a missing person folder
                _need_file(p, f"chip of {where}")
            out.append(Tracklet(paths, pid, cam, attrs))
        return out

    @staticmethod
    def chips(names: list[str], start: int, end: int, key: tuple[int, int, int], where: str) -> list[str]:
        """Chip names of rows start..end, checked against (person, outfit, camera), in frame order."""
        if not 0 <= start <= end < len(names):
            raise DatasetError(f"{where}: chips [{start}, {end}] are outside the name list (0..{len(names) - 1})")
        frames = names[start:end + 1]
        first, last = NAME.match(frames[0]), NAME.match(frames[-1])
        if (not first or not last or len({n[:STEM] for n in frames}) != 1
                or tuple(int(first[k]) for k in (1, 2, 3)) != key):
            raise DatasetError(f"{where}: person {key[0]} outfit {key[1]} camera {key[2]} disagree with its chips "
                               f"{frames[0]!r} .. {frames[-1]!r} (one tracklet's chips share PPPPOoooCcccTttt)")
        try:
            return sorted(frames, key=lambda n: int(n[STEM:-4]))
        except ValueError:
            raise DatasetError(f"{where}: a chip name among {frames[0]!r} .. {frames[-1]!r} has no frame number") from None
