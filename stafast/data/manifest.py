"""Tracklets as video files, listed by a manifest: `--dataset videos --root DIR`.

DIR holds manifest.csv or manifest.json (or --root names the manifest file itself) and the
videos.  Each row is one tracklet:

    path    the video file, relative to the manifest's folder (or absolute)
    pid     person id (integer; test rows may use -1 for junk and 0 for distractors, as MARS)
    camid   camera id (integer)
    split   train, query or gallery

CSV: a header row naming at least these columns (others are ignored).  JSON: a list of objects
with these keys.  Each file's frame count is read from its container (video.probe).  Train
person ids are relabelled 0..C-1; query/gallery keep theirs.  A missing column, a bad field, a
missing file or a container FFmpeg cannot read raises DatasetError naming the file and the row
(rows count from 1, the CSV header not included).
"""
from __future__ import annotations

import csv
import json
import os

from .datasets import DatasetError, VideoDataset, VideoTracklet, relabel
from .video import probe

COLUMNS = ("path", "pid", "camid", "split")
SPLITS = ("train", "query", "gallery")
MANIFESTS = ("manifest.csv", "manifest.json")


def find_manifest(root: str) -> str:
    """`root` itself when it is a manifest file, else the one manifest in the folder `root`."""
    if os.path.isfile(root):
        return root
    if not os.path.isdir(root):
        raise DatasetError(f"missing video dataset: {root} is neither a folder nor a manifest file")
    found = [os.path.join(root, m) for m in MANIFESTS if os.path.isfile(os.path.join(root, m))]
    if len(found) != 1:
        what = "no" if not found else "both"
        raise DatasetError(f"{root} holds {what} of {' / '.join(MANIFESTS)}: expected exactly one manifest "
                           f"(columns {', '.join(COLUMNS)})")
    return found[0]


def read_rows(path: str) -> dict[int, dict]:
    """The manifest's rows by number (from 1; CSV: line - 1) as dicts holding at least COLUMNS."""
    if path.endswith(".json"):
        try:
            with open(path) as f:
                rows = json.load(f)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path} is not a readable JSON manifest ({type(e).__name__}: {e})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DatasetError(f"{path}: expected a JSON list of objects with keys {', '.join(COLUMNS)}")
        for i, row in enumerate(rows):
            missing = [c for c in COLUMNS if c not in row]
            if missing:
                raise DatasetError(f"{path} row {i + 1}: missing {', '.join(missing)} (expected keys {', '.join(COLUMNS)})")
        return {i + 1: row for i, row in enumerate(rows)}
    try:
        with open(path, newline="") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path} is not a readable CSV manifest ({type(e).__name__}: {e})") from None
    header = [h.strip() for h in lines[0]] if lines else []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DatasetError(f"{path}: the header {header} lacks the column(s) {', '.join(missing)} "
                           f"(expected {', '.join(COLUMNS)})")
    rows = {}
    for i, fields in enumerate(lines[1:], start=1):  # row i is line i + 1
        if not any(x.strip() for x in fields):
            continue
        if len(fields) != len(header):
            raise DatasetError(f"{path} row {i}: {len(fields)} fields, but the header has {len(header)} ({header})")
        rows[i] = dict(zip(header, fields))
    return rows


def _integer(value, path: str, row: int, column: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DatasetError(f"{path} row {row}: {column} must be an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"{path} row {row}: {column} must be an integer, got {value!r}") from None


class VideoFiles(VideoDataset):
    name = "videos"

    def __init__(self, root: str):
        self.manifest = find_manifest(root)
        base = os.path.dirname(os.path.abspath(self.manifest))
        parts: dict[str, list[VideoTracklet]] = {s: [] for s in SPLITS}
        for i, row in read_rows(self.manifest).items():
            where = f"{self.manifest} row {i}"
            split = str(row["split"]).strip()
            if split not in SPLITS:
                raise DatasetError(f"{where}: split must be one of {SPLITS}, got {row['split']!r}")
            pid = _integer(row["pid"], self.manifest, i, "pid")
            camid = _integer(row["camid"], self.manifest, i, "camid")
            rel = str(row["path"]).strip()
            if not rel:
                raise DatasetError(f"{where}: empty path")
            path = os.path.join(base, rel)
            try:
                info = probe(path)
            except DatasetError as e:
                raise DatasetError(f"{where}: {e}") from None
            parts[split].append(VideoTracklet(path, info.num_frames, pid, camid, info.codec, info.readable))
        self.train, self.num_train_pids = relabel(parts["train"])
        self.query, self.gallery = parts["query"], parts["gallery"]


def write_manifest(path: str, rows: list[dict]) -> str:
    """Write rows (dicts with COLUMNS) as CSV or JSON, by `path`'s extension."""
    if path.endswith(".json"):
        with open(path, "w") as f:
            json.dump([{c: r[c] for c in COLUMNS} for r in rows], f, indent=1)
        return path
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path
