"""The datasets by the name the CLIs take (--dataset): one entry per name, each building its dataset.

An entry knows its dataset class (whose PROTOCOLS are the evaluation protocols its query and
gallery support), the protocol its leaderboard reports (the default --protocol), and what
--root must hold.  `load_dataset` builds the one named; nothing else chooses among datasets.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ..metrics import get_protocol
from .ccvid import CCVID
from .datasets import ILIDSVID, MARS, PRID2011, DatasetError, VideoDataset, attribute_arrays
from .dukev import DukeV
from .lsvid import LSVID
from .manifest import VideoFiles
from .mevid import MEVID


def _synthetic(root: str | None, split: int, protocol: str) -> MARS:
    from . import synth  # here, not at the top: `python -m stafast.data.synth` must not find it imported
    return MARS(synth.cached_mars(root), protocol)


@dataclass(frozen=True)
class Entry:
    cls: type[VideoDataset]
    default_protocol: str  # what the dataset's leaderboard reports
    layout: str | None  # what --root holds; None: --root is optional
    build: Callable[[str | None, int, str], VideoDataset] | None = None  # (root, split, protocol); None: cls(root)

    @property
    def protocols(self) -> tuple[str, ...]:
        return self.cls.PROTOCOLS

    def make(self, root: str | None, split: int, protocol: str) -> VideoDataset:
        return self.build(root, split, protocol) if self.build else self.cls(root)


DATASETS: dict[str, Entry] = {
    # MARS leaderboards since 2019 (AP3D, TCLNet, SINet, PSTA, ...) rank the queries against the
    # toolbox gallery with the queries put back: gallery+query
    "mars": Entry(MARS, "gallery+query", "bbox_train/, bbox_test/ and info/",
                  lambda root, split, protocol: MARS(root, protocol)),
    # iLIDS-VID and PRID2011 report CMC, the same under official and toolbox (one match per query)
    "ilidsvid": Entry(ILIDSVID, "official", "i-LIDS-VID/sequences/ and 'train-test people splits/'",
                      lambda root, split, protocol: ILIDSVID(root, split)),
    "prid2011": Entry(PRID2011, "official", "prid_2011/multi_shot/ and splits_prid2011.json",
                      lambda root, split, protocol: PRID2011(root, split)),
    "dukev": Entry(DukeV, "toolbox", "train/, query/ and gallery/"),
    "lsvid": Entry(LSVID, "toolbox", "list_sequence/, test/data/info_test.mat and tracklet_train|test/"),
    "mevid": Entry(MEVID, "general", "bbox_train|test/, *_name.txt, track_*_info.txt and query_IDX.txt"),
    "ccvid": Entry(CCVID, "general", "train.txt, query.txt, gallery.txt and session1|2|3/"),
    "videos": Entry(VideoFiles, "official", "its manifest and video files"),
    # the generated MARS-layout set: --root optional, a folder to generate it into or read it from
    # (by default a cache, see synth.cached_mars)
    "synthetic": Entry(MARS, "official", None, _synthetic),
}
DATASET_NAMES = tuple(DATASETS)


def entry(name: str) -> Entry:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASET_NAMES}")
    return DATASETS[name]


def default_protocol(name: str) -> str:
    """The --protocol of dataset `name` when none is given: the one its leaderboard reports."""
    return entry(name).default_protocol


def load_dataset(name: str, root: str | None = None, split: int = 0, protocol: str | None = None) -> VideoDataset:
    """Dataset `name` from `root`, for evaluation under `protocol` (default: default_protocol(name))."""
    e = entry(name)
    protocol = protocol or e.default_protocol
    if protocol not in e.protocols:
        raise ValueError(f"dataset {name} has no protocol {protocol!r}; its protocols are {e.protocols}")
    if e.layout and not root:
        raise DatasetError(f"--root is required for --dataset {name} (the folder holding {e.layout})")
    if e.layout and not os.path.exists(root):
        raise DatasetError(f"--root {root} does not exist (--dataset {name}: the folder holding {e.layout})")
    ds = e.make(root, split, protocol)
    for attr in get_protocol(protocol).attrs:
        if not all(attr in t.attrs for t in ds.query + ds.gallery):
            raise DatasetError(f"protocol {protocol} compares the {attr} of query and gallery tracklets, which "
                               f"{name} at {root} does not give them all{ds.ATTRIBUTE_HINTS.get(attr, '')}")
    return ds


def protocol_attrs(dataset: VideoDataset, protocol: str) -> dict:
    """The q_attrs / g_attrs keywords of stafast.metrics.evaluate for `dataset`'s query and gallery."""
    names = get_protocol(protocol).attrs
    return {"q_attrs": attribute_arrays(dataset.query, names), "g_attrs": attribute_arrays(dataset.gallery, names)}
