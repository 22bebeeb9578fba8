"""Check a dataset tree against the figures its authors published: the first thing to run after unpacking.

    python -m stafast.data.check --dataset NAME --root DIR

Loads the tree as training and evaluation would (stafast.data.load_dataset), then prints ids,
tracklets and frames per split next to the published figures, and lists what is missing or
unexpected: a file the layout needs (a truncated download, the wrong folder given as --root,
with a hint when the layout is one level off), a frame file that a list names but that is not
there, a query row outside the test list, image files in the frame folders that no tracklet
names.  Exits 0 when the tree is the published one, 1 when it is not.

"test" is the query and gallery tracklets together (each once).  ids count distinct person ids
(MARS's test split counts its distractor id 0 and junk id -1, as its paper does).  A figure
that the sources do not publish is left blank and not checked.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from .. import cli
from ..cli import option
from .catalog import DATASET_NAMES, load_dataset
from .datasets import DatasetError

SPLITS = ("train", "query", "gallery", "test")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Published:
    source: str
    figures: dict[str, dict[str, int]]  # split -> {"ids" | "tracklets" | "frames": n}: what is published
    marker: str                         # the entry of ROOT that tells the layout apart (for the --root hint)
    cameras: int | None = None
    folders: tuple[str, ...] = ()       # the frame folders under ROOT: image files there that no tracklet names are unexpected
    protocol: str | None = None         # the protocol to load with: the one whose gallery holds every test tracklet
    extra: dict[str, int] = field(default_factory=dict)  # other published figures, by the name summary() reports


def _split(ids=None, tracklets=None, frames=None) -> dict[str, int]:
    return {k: v for k, v in (("ids", ids), ("tracklets", tracklets), ("frames", frames)) if v is not None}


PUBLISHED = {
    "mars": Published(
        "Zheng et al., ECCV 2016 and the MARS-evaluation info/ files (shared/data/README.md)",
        {"train": _split(625, 8298, 509914), "query": _split(626, 1980, 114493), "test": _split(636, 12180, 681089)},
        "info", cameras=6, folders=("bbox_train", "bbox_test"), protocol="official"),
    "ilidsvid": Published(
        "Wang et al., ECCV 2014 (300 persons, 2 cameras; 150 / 150 per split)",
        {"train": _split(150, 300), "query": _split(150, 150), "gallery": _split(150, 150)},
        "i-LIDS-VID", cameras=2, folders=("i-LIDS-VID/sequences",)),
    "prid2011": Published(
        "Hirzer et al., SCIA 2011; the toolbox split file (89 / 89 of the 178 persons seen by both cameras)",
        {"train": _split(89, 178), "query": _split(89, 89), "gallery": _split(89, 89)}, "prid_2011", cameras=2),
    "dukev": Published(
        "Wu et al., CVPR 2018 and github.com/Yu-Wu/DukeMTMC-VideoReID (ids, tracklets); frames: the file counts "
        "that public loaders print",
        {"train": _split(702, 2196, 369656), "query": _split(702, 702, 111848), "gallery": _split(1110, 2636, 445764)},
        "train", cameras=8, folders=("train", "query", "gallery"), extra={"distractor ids": 408}),
    "lsvid": Published(
        "Li et al., ICCV 2019 (3,772 ids, 14,943 tracklets with the validation split, 15 cameras), as the public "
        "loaders (SINet, BiCnet-TKS) state the splits",
        {"train": _split(842, 2831), "query": _split(tracklets=3504), "gallery": _split(tracklets=7829)},
        "list_sequence", cameras=15, folders=("tracklet_train", "tracklet_test")),
    "mevid": Published(
        "Davila et al., WACV 2023 and github.com/Kitware/MEVID (bbox_train: 104 ids, 485 outfits, 6,338 tracklets; "
        "bbox_test: 54 ids, 113 outfits, 1,754 tracklets; 33 cameras)",
        {"train": _split(104, 6338), "test": _split(54, 1754)}, "track_test_info.txt", cameras=33,
        folders=("bbox_train", "bbox_test"), extra={"train outfits": 485, "test outfits": 113}),
    "ccvid": Published(
        "Gu et al., CVPR 2022 (226 ids, 2,856 tracklets, 347,833 frames; train 75 ids / 948, test 151 ids: "
        "834 query and 1,074 gallery tracklets)",
        {"train": _split(75, 948), "query": _split(tracklets=834), "gallery": _split(tracklets=1074),
         "test": _split(ids=151)}, "train.txt", folders=("session1", "session2", "session3"),
        extra={"frames": 347833}),
}


def unique(tracklets) -> list:
    seen, out = set(), []
    for t in tracklets:
        key = t.frames[0] if hasattr(t, "frames") else t.path
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def counts(tracklets) -> dict[str, int]:
    return {"ids": len({t.pid for t in tracklets}), "tracklets": len(tracklets), "frames": sum(len(t) for t in tracklets)}


def summary(ds) -> dict[str, int]:
    """Figures beyond the per-split counts: cameras, distractor ids, outfits, all frames."""
    test = unique(ds.query + ds.gallery)
    out = {"cameras": len({t.camid for t in ds.train + test}),
           "distractor ids": len({t.pid for t in ds.gallery} - {t.pid for t in ds.query}),
           "frames": sum(len(t) for t in ds.train + test)}
    for name, tracklets in (("train outfits", ds.train), ("test outfits", test)):
        if all("clothes" in t.attrs for t in tracklets):
            out[name] = len({t.attrs["clothes"] for t in tracklets})
    return out


def missing_frames(tracklets) -> list[str]:
    return [f for t in tracklets for f in getattr(t, "frames", ()) if not os.path.isfile(f)]


def unexpected_files(root: str, folders: tuple[str, ...], tracklets) -> list[str]:
    named = {os.path.normpath(f) for t in tracklets for f in getattr(t, "frames", ())}
    out = []
    for folder in folders:
        for dirpath, _, files in os.walk(os.path.join(root, folder)):
            out += sorted(p for p in (os.path.normpath(os.path.join(dirpath, f)) for f in files
                                      if f.lower().endswith(IMAGE_EXTS)) if p not in named)
    return out


def root_hint(root: str, marker: str) -> str:
    """Where --root should point, when the layout's marker is one level below or above it."""
    if os.path.isdir(root):
        below = sorted(d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, marker)))
        if below:
            return f"; {os.path.join(root, below[0], marker)} exists: try --root {os.path.join(root, below[0])}"
    parent = os.path.dirname(os.path.abspath(root))
    if os.path.exists(os.path.join(parent, marker)):
        return f"; {os.path.join(parent, marker)} exists: try --root {parent}"
    return ""


def table(found: dict[str, dict[str, int]], published: dict[str, dict[str, int]]) -> list[str]:
    rows = [f"  {'split':<8}" + "".join(f"{k:>24}" for k in ("ids", "tracklets", "frames"))]
    for s in SPLITS:
        cells = []
        for k in ("ids", "tracklets", "frames"):
            want = published.get(s, {}).get(k)
            mark = "" if want is None else f" ({want:,}){'' if found[s][k] == want else ' !'}"
            cells.append(f"{found[s][k]:,}{mark}")
        rows.append(f"  {s:<8}" + "".join(f"{c:>24}" for c in cells))
    return rows


def check(name: str, root: str, out=sys.stdout) -> int:
    """Print the report for dataset `name` at `root`; 0 when it is the published tree, else 1."""
    spec = PUBLISHED.get(name)
    print(f"{name} at {root}", file=out)
    try:
        ds = load_dataset(name, root, protocol=spec.protocol if spec else None)
    except (DatasetError, ImportError) as e:
        hint = root_hint(root, spec.marker) if spec and "missing" in str(e) else ""
        print(f"  not loadable: {e}{hint}", file=out)
        return 1
    splits = {"train": ds.train, "query": ds.query, "gallery": ds.gallery, "test": unique(ds.query + ds.gallery)}
    found = {s: counts(t) for s, t in splits.items()}
    problems = []
    if spec is None:
        print("  (no published figures to compare with)", file=out)
    else:
        print(f"  published: {spec.source}", file=out)
        problems += [f"{s} {k}: {found[s][k]:,}, published {v:,}" for s, fig in spec.figures.items()
                     for k, v in fig.items() if found[s][k] != v]
    print("\n".join(table(found, spec.figures if spec else {})), file=out)
    extra = summary(ds)
    wanted = {**({"cameras": spec.cameras} if spec and spec.cameras else {}), **(spec.extra if spec else {})}
    print("  " + ", ".join(f"{k} {extra[k]:,}" + (f" ({wanted[k]:,})" if k in wanted else "")
                           for k in extra if k in wanted or k == "cameras"), file=out)
    problems += [f"{k}: {extra.get(k, 0):,}, published {v:,}" for k, v in wanted.items() if extra.get(k) != v]
    everything = ds.train + splits["test"]
    missing = missing_frames(everything)
    if missing:
        problems.append(f"{len(missing):,} frame files named by the lists are missing, e.g. {missing[0]}")
    stray = unexpected_files(root, spec.folders, everything) if spec else []
    if stray:
        problems.append(f"{len(stray):,} image files in the frame folders belong to no tracklet, e.g. {stray[0]}")
    for w in getattr(ds, "skipped", []):
        problems.append(f"{w}: a tracklet without frames, skipped")
    print("  the published tree" if not problems else "  not the published tree:\n" +
          "\n".join(f"    - {p}" for p in problems), file=out)
    return int(bool(problems))


@dataclass(kw_only=True)
class CheckConfig:
    dataset: str = option(help="the dataset the tree should be", choices=DATASET_NAMES)
    root: str = option(help="the dataset's folder, as unpacked")


def main(argv=None) -> int:
    a = cli.parse(CheckConfig, argv, module="stafast.data.check", description=__doc__)
    return check(a.dataset, a.root)


if __name__ == "__main__":
    cli.run(main, "stafast.data.check")
