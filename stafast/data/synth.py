"""Synthetic video re-ID data in exactly the published layouts of MARS, iLIDS-VID and PRID2011.

    python -m stafast.data.synth --layout mars --out DIR [--ids 16 --test-ids 16 --cameras 3 ...]
    python -m stafast.data.synth --layout mars --out DIR --part-occlusion 0.3 --misalignment 0.1 --clutter 3 ...
    python -m stafast.data.synth --layout mars --out DIR --mars-structure ../shared/data/mars/info
    python -m stafast.data.synth --layout ilidsvid --out DIR
    python -m stafast.data.synth --layout prid2011 --out DIR --prid-splits ../shared/data/prid2011/splits_prid2011.json
    python -m stafast.data.synth --layout videos --out DIR [--codec vp9|mjpeg|h264]
    python -m stafast.data.synth --layout dukev|lsvid|mevid|ccvid --out DIR [--ids 16 --test-ids 16]

People are drawn from an identity seed: head (skin, hair, optional hat), torso (colour and a
texture: solid, stripes or checks), legs, shoes, and an optional bag on one side.  Across the
frames of a tracklet the figure shifts, scales and swings its legs; a camera sets the background
and the light; occluders (a post, a passer-by, a car) cover part of the person in some frames, so
that part-based attention has something to find.  All randomness comes from --seed.  The MARS
layout's difficulty is a parameter (`Difficulty`: body parts occluded per frame, misalignment,
background clutter, camera colour casts; and the numbers of ids, distractors and queries);
`--dataset synthetic` generates SYNTHETIC_SET into a cache folder named after its parameters.

`--mars-structure INFO` rebuilds the real MARS track tables (all 8,298 + 12,180 tracklets with
their real pids, cameras and the 1,980 queries), with at most --max-frames tiny frames each.

`--layout videos` writes the MARS-like set (same options) as one video file per tracklet,
DIR/videos/train|test/PPPP_cC_tTT.EXT, with DIR/manifest.csv (path, pid, camid, split: see
stafast/data/manifest.py): VP9 in WebM (default) or MJPEG in AVI, which DALI's CPU decoder
takes, or H.264 in MP4 for GPU (NVDEC) decoding.  Queries are the first tracklet of each test id
in each of its cameras; the gallery holds the others and the distractors (pid 0).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .. import cli
from ..cli import option

PALETTE = np.array([[200, 30, 30], [30, 120, 200], [30, 160, 60], [230, 200, 40], [120, 40, 160],
                    [240, 130, 20], [20, 20, 20], [235, 235, 235], [120, 80, 40], [100, 100, 110],
                    [240, 120, 180], [20, 60, 120], [80, 150, 150], [160, 160, 60]], dtype=np.float32)
SKIN = np.array([[240, 200, 170], [200, 150, 110], [150, 100, 70], [90, 60, 40]], dtype=np.float32)


@dataclass
class Style:
    skin: np.ndarray
    hair: np.ndarray
    hat: np.ndarray | None
    torso: np.ndarray
    torso2: np.ndarray
    texture: int          # 0 solid, 1 stripes, 2 checks
    legs: np.ndarray
    shoes: np.ndarray
    bag: np.ndarray | None
    bag_side: int
    width: float          # build


def person_style(seed: int) -> Style:
    rng = np.random.default_rng(seed)

    def colour():
        return PALETTE[rng.integers(len(PALETTE))] + rng.normal(0, 12, 3)
    return Style(skin=SKIN[rng.integers(len(SKIN))], hair=colour() * 0.5, hat=colour() if rng.random() < 0.3 else None,
                 torso=colour(), torso2=colour(), texture=int(rng.integers(3)), legs=colour(), shoes=colour() * 0.4,
                 bag=colour() if rng.random() < 0.4 else None, bag_side=int(rng.integers(2)),
                 width=float(rng.uniform(0.45, 0.65)))


@dataclass(frozen=True)
class Difficulty:
    """What makes the MARS-layout set hard, beyond the scene occluders (`occlusion`); all off by
    default, the set before these parameters existed.  Each targets a component of the paper:
    - part_occlusion: probability that a frame has one body part (head and shoulders, torso or
      legs) covered by a passer-by in palette colours, so a part is missing in some frames of a
      tracklet and present in others (what per-part temporal attention, Eqs. 11-13, can weigh);
    - misalignment: the figure's per-frame offset (a fraction of the frame) and scale change
      (1 +- misalignment) on top of the walk, as a jittery detector gives (what soft spatial
      attention, Eqs. 1-3, follows and fixed pooling cells do not);
    - clutter: background objects per tracklet in palette colours, some person-sized, which
      global average pooling mixes into the feature and attention can ignore;
    - light: per-camera colour cast, channel gains in 1 +- light (cross-camera matching)."""
    part_occlusion: float = 0.0
    misalignment: float = 0.0
    clutter: int = 0
    light: float = 0.0

    def __post_init__(self):
        if not (0 <= self.part_occlusion <= 1 and 0 <= self.misalignment < 0.5 and self.clutter >= 0
                and 0 <= self.light < 1):
            raise ValueError(f"Difficulty: part_occlusion in [0, 1], misalignment in [0, 0.5), clutter >= 0 and "
                             f"light in [0, 1) expected, got {self}")


@dataclass
class Scene:
    """What stays fixed over one tracklet: its difficulty, its clutter boxes (y0, y1, x0, x1 as
    fractions of the frame, colour) and the offset of its figure."""
    difficulty: Difficulty
    clutter: list
    offset: tuple[float, float]


def draw_scene(difficulty: Difficulty, rng: np.random.Generator) -> Scene:
    boxes = []
    for _ in range(difficulty.clutter):
        hh, ww = rng.uniform(0.1, 0.6), rng.uniform(0.1, 0.4)
        y0, x0 = rng.uniform(0, 1 - hh), rng.uniform(-0.1, 1 - ww + 0.1)
        boxes.append((y0, y0 + hh, x0, x0 + ww, PALETTE[rng.integers(len(PALETTE))] + rng.normal(0, 12, 3)))
    m = difficulty.misalignment
    return Scene(difficulty, boxes, (rng.uniform(-m, m), rng.uniform(-m, m) / 2) if m else (0.0, 0.0))


def render(style: Style, h: int, w: int, cam: int, t: int, rng: np.random.Generator, occlusion: float = 0.3,
           scene: Scene | None = None) -> np.ndarray:
    """One frame (h, w, 3) uint8 of a person with `style` seen by camera `cam` at time t, in `scene`
    (default: no clutter, part occlusion, misalignment or colour cast)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cam_rng = np.random.default_rng(1000 + cam)
    bg = cam_rng.uniform(60, 200, 3) * (0.8 + 0.4 * yy[..., None] / h)
    img = np.broadcast_to(bg, (h, w, 3)).astype(np.float32).copy()
    hard = scene.difficulty if scene is not None else Difficulty()
    for y0, y1, x0, x1, colour in scene.clutter if scene is not None else ():
        img[int(y0 * h):int(np.ceil(y1 * h)), max(0, int(x0 * w)):max(0, int(np.ceil(x1 * w)))] = colour
    scale = rng.uniform(0.85, 1.0)
    cx = w / 2 + rng.uniform(-0.08, 0.08) * w
    top = h * 0.04 + rng.uniform(0, 0.04) * h + abs(np.sin(t * 0.9)) * 0.02 * h
    if hard.misalignment:  # the tracklet's offset, then this frame's jitter and scale change
        m = hard.misalignment
        scale *= rng.uniform(1 - m, 1 + m / 2)
        cx += (scene.offset[0] + rng.uniform(-m, m) / 2) * w
        top += (scene.offset[1] + rng.uniform(-m, m) / 4) * h
    ph, pw = h * 0.92 * scale, w * style.width * scale

    def box(y0, y1, x0, x1, colour):
        m = (yy >= top + y0 * ph) & (yy < top + y1 * ph) & (xx >= cx + x0 * pw) & (xx < cx + x1 * pw)
        img[m] = colour

    swing = np.sin(t * 1.3 + rng.uniform(-0.3, 0.3)) * 0.12
    box(0.52, 0.93, -0.32 + swing, -0.02 + swing, style.legs)             # legs
    box(0.52, 0.93, 0.02 - swing, 0.32 - swing, style.legs)
    box(0.93, 1.0, -0.34 + swing, -0.02 + swing, style.shoes)
    box(0.93, 1.0, 0.02 - swing, 0.34 - swing, style.shoes)
    torso = (yy >= top + 0.16 * ph) & (yy < top + 0.54 * ph) & (np.abs(xx - cx) < 0.45 * pw)
    if style.texture == 1:
        pattern = ((yy - top) // max(2.0, ph * 0.05)) % 2 == 0
    elif style.texture == 2:
        pattern = (((yy - top) // max(2.0, ph * 0.06)) + ((xx - cx) // max(2.0, pw * 0.15))) % 2 == 0
    else:
        pattern = np.zeros_like(torso)
    img[torso] = style.torso
    img[torso & pattern] = style.torso2
    head = ((yy - (top + 0.09 * ph)) / (0.08 * ph)) ** 2 + ((xx - cx) / (0.2 * pw)) ** 2 < 1
    img[head] = style.skin
    img[head & (yy < top + 0.06 * ph)] = style.hair
    if style.hat is not None:
        box(-0.01, 0.04, -0.28, 0.28, style.hat)
    if style.bag is not None:
        side = 1 if style.bag_side else -1
        x0, x1 = (0.42, 0.75) if side > 0 else (-0.75, -0.42)
        box(0.34, 0.6, x0, x1, style.bag)
    if hard.part_occlusion and rng.random() < hard.part_occlusion:  # a passer-by covers one body part
        y0, y1 = ((-0.02, 0.2), (0.14, 0.56), (0.5, 1.02))[rng.integers(3)]
        colour = PALETTE[rng.integers(len(PALETTE))] + rng.normal(0, 12, 3)
        img[max(0, int(top + y0 * ph)):max(0, int(top + y1 * ph)),
            max(0, int(cx - 0.8 * pw)):max(0, int(cx + 0.8 * pw))] = colour
    if rng.random() < occlusion:  # a post, a passer-by or a car covers part of the person
        kind = rng.integers(3)
        colour = rng.uniform(30, 220, 3)
        if kind == 0:
            x0 = rng.uniform(0.2, 0.6) * w
            img[:, int(x0):int(x0 + rng.uniform(0.15, 0.3) * w)] = colour
        elif kind == 1:
            y0 = rng.uniform(0.0, 0.5) * h
            img[int(y0):int(y0 + rng.uniform(0.25, 0.45) * h)] = colour
        else:
            img[int(rng.uniform(0.55, 0.75) * h):] = colour
    if hard.light:
        img *= 1 + hard.light * cam_rng.uniform(-1, 1, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_sequence(paths: list[str], style: Style, h: int, w: int, cam: int, rng, occlusion: float, quality=90,
                   difficulty: Difficulty | None = None):
    scene = draw_scene(difficulty, rng) if difficulty is not None else None
    for t, path in enumerate(paths):
        img = Image.fromarray(render(style, h, w, cam, t, rng, occlusion, scene))
        if path.endswith(".jpg"):
            img.save(path, quality=quality)
        else:
            img.save(path)


def _mars_folder(pid: int) -> str:
    return "00-1" if pid == -1 else f"{pid:04d}"


def _write_mars_split(out: str, split: str, tracks: list[tuple[int, int, int]], size, seed, occlusion,
                      difficulty: Difficulty | None = None):
    """tracks: (pid, cam, frames) in name-list order.  Writes images and the name list; returns rows."""
    h, w = size
    names, rows, counters = [], [], {}
    for pid, cam, n in tracks:
        t = counters[(pid, cam)] = counters.get((pid, cam), 0) + 1
        folder = _mars_folder(pid)
        frames = [f"{folder}C{cam}T{t:04d}F{f + 1:03d}.jpg" for f in range(n)]
        rows.append((len(names) + 1, len(names) + n, pid, cam))
        names += frames
        os.makedirs(os.path.join(out, f"bbox_{split}", folder), exist_ok=True)
        style_seed = seed * 100003 + pid if pid > 0 else seed * 7919 + len(rows)  # distractors/junk: each its own
        rng = np.random.default_rng([seed, len(rows), 1 if split == "train" else 2])
        style = person_style(style_seed)
        if pid == -1:  # junk: a detector false alarm, mostly background
            style.width = 0.1
        write_sequence([os.path.join(out, f"bbox_{split}", folder, f) for f in frames], style, h, w, cam, rng, occlusion,
                       difficulty=difficulty)
    if names != sorted(names):
        raise AssertionError("MARS name list must be sorted by folder then file name")
    with open(os.path.join(out, "info", f"{split}_name.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    return np.array(rows, dtype=np.int32).reshape(-1, 4)


def _save_mars_info(out, train_rows, test_rows, query_idx):
    import scipy.io
    scipy.io.savemat(os.path.join(out, "info", "tracks_train_info.mat"), {"track_train_info": train_rows.astype(np.int32)})
    scipy.io.savemat(os.path.join(out, "info", "tracks_test_info.mat"), {"track_test_info": test_rows.astype(np.int32)})
    scipy.io.savemat(os.path.join(out, "info", "query_IDX.mat"),
                     {"query_IDX": np.asarray(query_idx, dtype=np.uint16).reshape(1, -1)})


def _sort_key(track):
    folder = _mars_folder(track[0])
    return folder, track[1]


def make_mars(out: str, ids: int = 16, test_ids: int = 16, cameras: int = 3, tracklets: int = 2,
              frames: tuple[int, int] = (8, 16), size=(128, 64), distractors: int = 4, junk: int = 2,
              seed: int = 0, occlusion: float = 0.3, difficulty: Difficulty | None = None,
              queries: int | None = None, test_tracklets: int | None = None) -> str:
    """A small MARS tree: every id is seen by 2..cameras cameras with `tracklets` tracklets each
    (`test_tracklets` for the test ids, default the same).  Queries: one tracklet per camera of
    each test id seen in two or more cameras, or a random `queries` of those; `difficulty`: see
    Difficulty (None: none of it)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "info"), exist_ok=True)

    def tracks_for(pids, per_camera):
        out_tracks = []
        for pid in pids:
            cams = sorted(rng.choice(np.arange(1, cameras + 1), size=int(rng.integers(2, cameras + 1)), replace=False))
            for cam in cams:
                out_tracks += [(int(pid), int(cam), int(rng.integers(frames[0], frames[1] + 1))) for _ in range(per_camera)]
        return out_tracks

    train = tracks_for(range(1, ids + 1), tracklets)
    test_pids = range(ids + 1, ids + test_ids + 1)
    test = tracks_for(test_pids, tracklets if test_tracklets is None else test_tracklets)
    test += [(0, int(rng.integers(1, cameras + 1)), int(rng.integers(frames[0], frames[1] + 1))) for _ in range(distractors)]
    test += [(-1, int(rng.integers(1, cameras + 1)), int(rng.integers(1, 4))) for _ in range(junk)]
    test.sort(key=_sort_key)  # name-list order: folder ("00-1" < "0000" < "0001"...), then camera
    train_rows = _write_mars_split(out, "train", train, size, seed, occlusion, difficulty)
    test_rows = _write_mars_split(out, "test", test, size, seed, occlusion, difficulty)
    query = []
    for pid in test_pids:  # one query per camera for every id seen in two or more cameras
        rows = np.flatnonzero(test_rows[:, 2] == pid)
        cams = sorted(set(test_rows[rows, 3]))
        if len(cams) >= 2:
            query += [int(rng.choice(rows[test_rows[rows, 3] == c])) + 1 for c in cams]
    if queries is not None and queries < len(query):
        query = list(rng.choice(query, queries, replace=False))
    _save_mars_info(out, train_rows, test_rows, sorted(query))
    return out


# The generator's version: bump it whenever make_mars draws other images for the same parameters,
# so that no cache written by an older generator is ever read (its folder name changes).
GENERATOR_VERSION = 2

# `--dataset synthetic` and `make demo`: sized so that the paper's model lands well below
# saturation on 2 CPU cores in a few minutes, with enough queries to tell its components apart
# (README, "Quick start"; bench/README.md, component analysis).
SYNTHETIC_SET = dict(ids=32, test_ids=100, cameras=3, tracklets=2, test_tracklets=1, frames=(8, 16), size=(128, 64),
                     distractors=20, junk=2, occlusion=0.3, queries=None,
                     difficulty=Difficulty(part_occlusion=0.2, misalignment=0.05, clutter=1, light=0.1))


def cache_name(params: dict, seed: int) -> str:
    """The cache folder of the set make_mars(**params, seed=seed) writes: the generator's version and
    a hash of every parameter, so that another generator or another parameter never reads it."""
    described = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in params.items()}
    digest = hashlib.sha1(json.dumps(described, sort_keys=True).encode()).hexdigest()[:10]
    return f"synthetic-mars-g{GENERATOR_VERSION}-{digest}-s{seed}"


def cached_mars(root: str | None = None, seed: int = 0, params: dict | None = None) -> str:
    """The synthetic MARS-layout set of `--dataset synthetic`: `root` if it holds one, else generated
    once with `params` (default SYNTHETIC_SET) into `root` or, without one, into $STAFAST_CACHE
    (default ~/.cache/stafast)/cache_name(params, seed)."""
    if root and os.path.isdir(os.path.join(root, "info")):
        return root
    params = SYNTHETIC_SET if params is None else params
    root = root or os.path.join(os.environ.get("STAFAST_CACHE", os.path.expanduser("~/.cache/stafast")),
                                cache_name(params, seed))
    if not os.path.isdir(os.path.join(root, "info")):
        parent = os.path.dirname(os.path.abspath(root))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix=".synth-")
        make_mars(tmp, seed=seed, **params)
        try:
            os.rename(tmp, root)  # atomic: a concurrent or killed generation never leaves half a tree
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not os.path.isdir(os.path.join(root, "info")):
                raise
    return root


def make_mars_structure(out: str, info: str, max_frames: int = 1, size=(16, 8), seed: int = 0) -> str:
    """The real MARS track tables (pids, cameras, queries) with at most `max_frames` tiny frames per tracklet."""
    from .datasets import load_mat_var
    train_rows = load_mat_var(os.path.join(info, "tracks_train_info.mat"), "track_train_info", 4)
    test_rows = load_mat_var(os.path.join(info, "tracks_test_info.mat"), "track_test_info", 4)
    query = load_mat_var(os.path.join(info, "query_IDX.mat"), "query_IDX").ravel()
    os.makedirs(os.path.join(out, "info"), exist_ok=True)

    def tracks(rows):
        return [(int(p), int(c), int(min(max_frames, e - s + 1))) for s, e, p, c in rows]
    new_train = _write_mars_split(out, "train", tracks(train_rows), size, seed, 0.0)
    new_test = _write_mars_split(out, "test", tracks(test_rows), size, seed, 0.0)
    _save_mars_info(out, new_train, new_test, query)
    return out


def make_videos(out: str, ids: int = 16, test_ids: int = 16, cameras: int = 3, tracklets: int = 2,
                frames: tuple[int, int] = (8, 16), size=(128, 64), distractors: int = 4, seed: int = 0,
                occlusion: float = 0.3, codec: str = "vp9", gop: int = 25) -> str:
    """The MARS-like synthetic set as video files + manifest.csv (see the module doc)."""
    from .manifest import write_manifest
    from .video import ENCODERS, write_video
    if codec not in ENCODERS:
        raise ValueError(f"codec must be one of {tuple(ENCODERS)}, got {codec!r}")
    rng = np.random.default_rng(seed)
    h, w = size
    rows = []

    def tracks(pids, split):
        for pid in pids:
            cams = sorted(rng.choice(np.arange(1, cameras + 1), size=int(rng.integers(min(2, cameras), cameras + 1)),
                          replace=False))
            for cam in cams:
                for t in range(1, tracklets + 1):
                    query = split == "test" and t == 1 and len(cams) >= 2 and pid > 0
                    yield int(pid), int(cam), t, "train" if split == "train" else "query" if query else "gallery"

    plan = list(tracks(range(1, ids + 1), "train")) + list(tracks(range(ids + 1, ids + test_ids + 1), "test"))
    plan += [(0, int(rng.integers(1, cameras + 1)), t + 1, "gallery") for t in range(distractors)]
    for n, (pid, cam, t, split) in enumerate(plan):
        folder = os.path.join("videos", "train" if split == "train" else "test")
        os.makedirs(os.path.join(out, folder), exist_ok=True)
        rel = os.path.join(folder, f"{pid:04d}_c{cam}_t{t:02d}{ENCODERS[codec][1]}")
        style = person_style(seed * 100003 + pid if pid > 0 else seed * 7919 + n)
        frame_rng = np.random.default_rng([seed, n, 3])
        count = int(rng.integers(frames[0], frames[1] + 1))
        write_video(os.path.join(out, rel), [render(style, h, w, cam, i, frame_rng, occlusion) for i in range(count)],
                    codec, gop=gop)
        rows.append({"path": rel, "pid": pid, "camid": cam, "split": split})
    write_manifest(os.path.join(out, "manifest.csv"), rows)
    return out


def make_ilidsvid(out: str, persons: int = 300, frames: tuple[int, int] = (4, 8), size=(128, 64), splits: int = 10,
                  seed: int = 0, occlusion: float = 0.3) -> str:
    """i-LIDS-VID/sequences/cam1|cam2/personNNN/camC_personNNN_FFFFF.png + the ls_set split file."""
    import scipy.io
    rng = np.random.default_rng(seed)
    numbers = np.sort(rng.choice(np.arange(1, int(persons * 1.07) + 1), size=persons, replace=False))  # gaps, like 1..319
    h, w = size
    for n in numbers:
        style = person_style(seed * 100003 + int(n))
        for cam in (1, 2):
            folder = os.path.join(out, "i-LIDS-VID", "sequences", f"cam{cam}", f"person{n:03d}")
            os.makedirs(folder, exist_ok=True)
            start = int(rng.integers(1, 5000))
            count = int(rng.integers(frames[0], frames[1] + 1))
            paths = [os.path.join(folder, f"cam{cam}_person{n:03d}_{start + 7 * i:05d}.png") for i in range(count)]
            write_sequence(paths, style, h, w, cam, np.random.default_rng([seed, int(n), cam]), occlusion)
    ls_set = np.stack([rng.permutation(persons) + 1 for _ in range(splits)])
    os.makedirs(os.path.join(out, "train-test people splits"), exist_ok=True)
    scipy.io.savemat(os.path.join(out, "train-test people splits", "train_test_splits_ilidsvid.mat"),
                     {"ls_set": ls_set.astype(np.float64)})
    return out


def make_prid2011(out: str, splits_file: str | None = None, cam_a: int = 385, cam_b: int = 749, shared: int = 200,
                  frames: tuple[int, int] = (4, 8), size=(128, 64), seed: int = 0, occlusion: float = 0.3) -> str:
    """prid_2011/multi_shot/cam_a|cam_b/person_NNNN/NNNN.png + splits_prid2011.json.

    The first `shared` persons appear in both cameras.  With `splits_file` (the published one),
    it is copied; otherwise 10 random 50/50 splits of the shared persons are written.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    for cam, count in (("cam_a", cam_a), ("cam_b", cam_b)):
        for n in range(1, count + 1):
            pid_seed = seed * 100003 + n if n <= shared else seed * 100003 + 10000 * (cam == "cam_b") + n
            folder = os.path.join(out, "prid_2011", "multi_shot", cam, f"person_{n:04d}")
            os.makedirs(folder, exist_ok=True)
            k = int(rng.integers(frames[0], frames[1] + 1))
            write_sequence([os.path.join(folder, f"{i + 1:04d}.png") for i in range(k)], person_style(pid_seed), h, w,
                           1 if cam == "cam_a" else 2, np.random.default_rng([seed, n, cam == "cam_b"]), occlusion)
    if splits_file:
        splits = json.load(open(splits_file))
    else:
        persons = [f"person_{n:04d}" for n in range(1, shared + 1)]
        splits = []
        for _ in range(10):
            perm = list(rng.permutation(persons))
            splits.append({"train": sorted(perm[:shared // 2]), "test": sorted(perm[shared // 2:])})
    with open(os.path.join(out, "splits_prid2011.json"), "w") as f:
        json.dump(splits, f)
    return out


# ------------------------------------------------- DukeMTMC-VideoReID, LS-VID, MEVID and CCVID
# Each generator writes the layout its loader reads (stafast/data/dukev.py, lsvid.py, mevid.py,
# ccvid.py); a person in another outfit keeps skin, hair and build and changes clothes.

MEVID_CAMERAS = (301, 329, 330, 336, 340, 436, 505, 507, 508, 509, 639)  # the cameras of MEVID's test set


def clothed_style(seed: int, pid: int, outfit: int = 0) -> Style:
    """Person `pid` (seeded by `seed`) wearing outfit `outfit`; outfit 0 is person_style's own."""
    person = person_style(seed * 100003 + pid)
    if outfit == 0:
        return person
    c = person_style(seed * 100003 + 7919 * outfit + 104729 * pid)
    return dataclasses.replace(person, hat=c.hat, torso=c.torso, torso2=c.torso2, texture=c.texture, legs=c.legs,
                               shoes=c.shoes, bag=c.bag, bag_side=c.bag_side)


def _cameras(rng, cameras, low: int = 2, high: int = 3) -> list[int]:
    cameras = list(cameras)
    return sorted(int(c) for c in rng.choice(cameras, size=min(len(cameras), int(rng.integers(low, high + 1))),
                                             replace=False))


def _write(paths: list[str], seed: int, pid: int, outfit: int, cam: int, key: int, size, occlusion: float):
    os.makedirs(os.path.dirname(paths[0]), exist_ok=True)
    write_sequence(paths, clothed_style(seed, pid, outfit), size[0], size[1], cam,
                   np.random.default_rng([seed, key, pid, cam]), occlusion)


def make_dukev(out: str, ids: int = 8, test_ids: int = 8, distractors: int = 3, cameras: int = 8,
               frames: tuple[int, int] = (8, 16), size=(128, 64), seed: int = 0, occlusion: float = 0.3) -> str:
    """train|query|gallery/PPPP/TTTT/PPPP_Cc_Ffff_Xnnnnn.jpg: every id in 2-3 of `cameras` cameras
    with 1-2 tracklets each; a test id's first tracklet is its query; `distractors` ids in the
    gallery only, one camera, frames marked D; every third tracklet starts at F0002."""
    rng = np.random.default_rng(seed)
    n = 0
    persons = [(pid, "train") for pid in range(1, ids + 1)] + [(pid, "test") for pid in range(ids + 1, ids + test_ids + 1)]
    persons += [(pid, "distractor") for pid in range(ids + test_ids + 1, ids + test_ids + distractors + 1)]
    for pid, role in persons:
        cams = _cameras(rng, range(1, cameras + 1), *((1, 1) if role == "distractor" else (2, 3)))
        tracks = [cam for cam in cams for _ in range(int(rng.integers(1, 3)))]
        for t, cam in enumerate(tracks, start=1):
            n += 1
            split = "train" if role == "train" else "query" if role == "test" and t == 1 else "gallery"
            first, video = 2 if n % 3 == 0 else 1, int(rng.integers(1, 50000))
            count = int(rng.integers(frames[0], frames[1] + 1))
            mark = "D" if role == "distractor" else "X"
            folder = os.path.join(out, split, f"{pid:04d}", f"{t:04d}")
            _write([os.path.join(folder, f"{pid:04d}_C{cam}_F{first + i:04d}_{mark}{video + 12 * i:05d}.jpg")
                    for i in range(count)], seed, pid, 0, cam, n, size, occlusion)
    return out


def save_mat73(path: str, **arrays) -> str:
    """A MATLAB v7.3 MAT-file, as MATLAB writes one: HDF5 after a 512-byte text header, each
    variable a dataset of doubles; MATLAB stores a column vector (n x 1) as HDF5 shape (1, n)."""
    import h5py
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in arrays.items():
            f.create_dataset(name, data=np.asarray(value, dtype=np.float64).reshape(1, -1))
            f[name].attrs["MATLAB_class"] = np.bytes_("double")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: stafast synth HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116) + bytes(8) + b"\x00\x02IM")
    return path


def make_lsvid(out: str, ids: int = 8, test_ids: int = 8, distractors: int = 2, cameras: int = 15,
               frames: tuple[int, int] = (8, 16), size=(128, 64), seed: int = 0, occlusion: float = 0.3) -> str:
    """list_sequence/list_seq_train|test.txt, test/data/info_test.mat (v7.3) and
    tracklet_train|test/PPPP/PPPP_SSSS_CC_FFFF.jpg: ids in 2-3 cameras with 1-2 tracklets each;
    a test id's first tracklet is its query; `distractors` test ids in one camera only."""
    rng = np.random.default_rng(seed)
    lines = {"train": [], "test": []}
    query, n = [], 0
    persons = [(pid, "train") for pid in range(1, ids + 1)] + [(pid, "test") for pid in range(ids + 1, ids + test_ids + 1)]
    persons += [(pid, "distractor") for pid in range(ids + test_ids + 1, ids + test_ids + distractors + 1)]
    for pid, role in persons:
        split = "train" if role == "train" else "test"
        for c, cam in enumerate(_cameras(rng, range(1, cameras + 1), *((1, 1) if role == "distractor" else (2, 3)))):
            for k in range(int(rng.integers(1, 3))):
                n += 1
                prefix = f"tracklet_{split}/{pid:04d}/{pid:04d}_{n:04d}_{cam:02d}"
                if role == "test" and c == k == 0:
                    query.append(len(lines["test"]) + 1)  # 1-based, as MATLAB indexes
                lines[split].append(f"{prefix} {pid}")
                first = int(rng.integers(1, 500))
                _write([os.path.join(out, f"{prefix}_{first + i:04d}.jpg") for i in
                        range(int(rng.integers(frames[0], frames[1] + 1)))], seed, pid, 0, cam, n, size, occlusion)
    os.makedirs(os.path.join(out, "list_sequence"), exist_ok=True)
    for split, rows in lines.items():
        with open(os.path.join(out, "list_sequence", f"list_seq_{split}.txt"), "w") as f:
            f.write("\n".join(rows) + "\n")
    os.makedirs(os.path.join(out, "test", "data"), exist_ok=True)
    save_mat73(os.path.join(out, "test", "data", "info_test.mat"), query=query)
    return out


def make_mevid(out: str, ids: int = 8, test_ids: int = 8, outfits: int = 3, cameras=MEVID_CAMERAS,
               frames: tuple[int, int] = (8, 16), size=(128, 64), seed: int = 0, occlusion: float = 0.3) -> str:
    """bbox_train|test/PPPP/PPPPOoooCcccTtttFfffff.jpg, train|test_name.txt, track_train|test_info.txt
    (start end pid outfit camera, 0-based, written as numpy.savetxt floats), query_IDX.txt and
    test_track_scale.txt: each person in 1-`outfits` outfits, each outfit in 1-2 cameras; a test
    person's first tracklets in its first and last outfits are queries."""
    rng = np.random.default_rng(seed)
    for split, pids in (("train", range(1, ids + 1)), ("test", range(ids + 1, ids + test_ids + 1))):
        names, rows, query, scales = [], [], [], []
        for pid in pids:
            seen, worn = [], int(rng.integers(1, outfits + 1))
            for outfit in range(1, worn + 1):
                cams = _cameras(rng, [c for c in cameras if c not in seen[-1:]], 1, 2)
                seen += cams
                for cam in cams:
                    for t in range(int(rng.integers(1, 3))):
                        if split == "test" and outfit in (1, worn) and cam == cams[0] and t == 0:
                            query.append(len(rows))
                        chips = [f"{pid:04d}O{outfit:03d}C{cam:03d}T{t:03d}F{f:05d}.jpg"
                                 for f in range(int(rng.integers(frames[0], frames[1] + 1)))]
                        rows.append((len(names), len(names) + len(chips) - 1, pid, outfit, cam))
                        scales.append(f"{chips[-1]} {'lm'[int(rng.integers(2))]}")
                        names += chips
                        _write([os.path.join(out, f"bbox_{split}", f"{pid:04d}", c) for c in chips], seed, pid, outfit,
                               cam, len(rows) + 10000 * (split == "test"), size, occlusion)
        with open(os.path.join(out, f"{split}_name.txt"), "w") as f:
            f.write("\n".join(names) + "\n")
        np.savetxt(os.path.join(out, f"track_{split}_info.txt"), np.array(rows, dtype=np.float64))
    np.savetxt(os.path.join(out, "query_IDX.txt"), np.array(query), fmt="%d")
    with open(os.path.join(out, "test_track_scale.txt"), "w") as f:
        f.write("\n".join(scales) + "\n")
    return out


def ccvid_clothes(outfit: int) -> str:
    """A CCVID clothes label (upper, lower, shoes, coat, accessory) for outfit number `outfit`."""
    return f"u{outfit}_l{outfit % 2}_s{outfit % 3}_c{outfit // 2}_a{outfit % 2}"


def make_ccvid(out: str, ids: int = 8, test_ids: int = 8, walks: int = 4, frames: tuple[int, int] = (8, 16),
               size=(128, 64), seed: int = 0, occlusion: float = 0.3) -> str:
    """train|query|gallery.txt (`session/PPP_WW pid clothes`) and session1|2|3/PPP_WW/NNNNN.jpg:
    each person walks `walks` times in session 1, in other clothes half the time in session 2,
    and a third of the persons again in session 3 (other clothes); a test person's first walk of
    each session is a query, the other walks are the gallery."""
    rng = np.random.default_rng(seed)
    lists = {"train": [], "query": [], "gallery": []}
    for pid in range(1, ids + test_ids + 1):
        sessions = [(1, 0), (2, int(rng.random() < 0.5))] + ([(3, 2)] if pid % 3 == 0 else [])
        for session, outfit in sessions:
            for walk in range(1, walks + 1):
                folder = f"session{session}/{pid:03d}_{walk:02d}"
                split = "train" if pid <= ids else "query" if walk == 1 else "gallery"
                lists[split].append(f"{folder} {pid} {ccvid_clothes(outfit)}")
                cam = walk + (12 if session == 3 else 0)  # the camera the loader derives (ccvid.py)
                _write([os.path.join(out, folder, f"{i + 1:05d}.jpg") for i in
                        range(int(rng.integers(frames[0], frames[1] + 1)))], seed, pid, outfit, cam,
                       100 * session + walk, size, occlusion)
    for split, rows in lists.items():
        with open(os.path.join(out, f"{split}.txt"), "w") as f:
            f.write("\n".join(rows) + "\n")
    return out


LAYOUTS = {"dukev": make_dukev, "lsvid": make_lsvid, "mevid": make_mevid, "ccvid": make_ccvid}


@dataclass(kw_only=True)
class SynthConfig:
    """The flags of `python -m stafast.data.synth`; the groups of --help name the layouts that read them."""
    layout: str = option(help="the published layout to write", choices=("mars", "ilidsvid", "prid2011", "videos",
                                                                         *LAYOUTS))
    out: str = option(help="the folder to write the tree into")
    ids: int = option(16, "training ids (mars, videos, dukev, lsvid, mevid, ccvid)")
    test_ids: int = option(16, "test ids (mars, videos, dukev, lsvid, mevid, ccvid)")
    min_frames: int = option(8, "frames per tracklet, at least")
    max_frames: int | None = option(None, "frames per tracklet, at most (default 16; with --mars-structure: 1)")
    height: int | None = option(None, "frame height (default 128; with --mars-structure: 16)")
    width: int | None = option(None, "frame width (default 64; with --mars-structure: 8)")
    occlusion: float = option(0.3, "probability that a frame has an occluder")
    seed: int = option(0, "all randomness comes from it")
    cameras: int = option(3, "cameras, 1..6 (MARS names hold one digit)", "mars and videos")
    tracklets: int = option(2, "tracklets per id and camera", "mars and videos")
    part_occlusion: float = option(0.0, "probability that a frame has one body part covered (see Difficulty)", "mars")
    misalignment: float = option(0.0, "per-frame offset and scale jitter (fraction)", "mars")
    clutter: int = option(0, "background objects per tracklet", "mars")
    light: float = option(0.0, "per-camera colour cast, gains in 1 +- LIGHT", "mars")
    distractors: int = option(4, "distractor tracklets (pid 0) in the gallery", "mars")
    queries: int | None = option(None, "at most this many query tracklets (default: one per camera of every test "
                                       "id seen in two or more)", "mars")
    mars_structure: str | None = option(None, "rebuild the real MARS tables from this info/ folder", "mars",
                                        metavar="INFO")
    codec: str = option("vp9", "VP9/WebM or MJPEG/AVI (DALI decodes both on the CPU), H.264/MP4 (GPU only in "
                               "DALI)", "videos", choices=("vp9", "mjpeg", "h264"))
    gop: int = option(25, "a keyframe at least every GOP frames", "videos")
    persons: int = option(300, "persons", "ilidsvid")
    prid_splits: str | None = option(None, "the published split file to use", "prid2011", metavar="JSON")

    def __post_init__(self):
        if not 1 <= self.cameras <= 6:
            raise ValueError(f"--cameras must be in 1..6 (MARS names hold one digit), got {self.cameras}")


def main(argv=None) -> str:
    a = cli.parse(SynthConfig, argv, module="stafast.data.synth", description=__doc__)
    tiny = a.layout == "mars" and a.mars_structure  # 20,478 tracklets: tiny frames by default
    a.max_frames = a.max_frames or (1 if tiny else 16)
    a.min_frames = min(a.min_frames, a.max_frames)
    size = (a.height or (16 if tiny else 128), a.width or (8 if tiny else 64))
    frames = (a.min_frames, a.max_frames)
    if a.layout == "mars" and a.mars_structure:
        out = make_mars_structure(a.out, a.mars_structure, a.max_frames, size, a.seed)
    elif a.layout == "mars":
        difficulty = Difficulty(a.part_occlusion, a.misalignment, a.clutter, a.light)
        out = make_mars(a.out, a.ids, a.test_ids, a.cameras, a.tracklets, frames, size, a.distractors, seed=a.seed,
                        occlusion=a.occlusion, difficulty=difficulty, queries=a.queries)
    elif a.layout == "videos":
        out = make_videos(a.out, a.ids, a.test_ids, a.cameras, a.tracklets, frames, size, seed=a.seed,
                          occlusion=a.occlusion, codec=a.codec, gop=a.gop)
    elif a.layout in LAYOUTS:
        out = LAYOUTS[a.layout](a.out, a.ids, a.test_ids, frames=frames, size=size, seed=a.seed, occlusion=a.occlusion)
    elif a.layout == "ilidsvid":
        out = make_ilidsvid(a.out, a.persons, frames, size, seed=a.seed, occlusion=a.occlusion)
    else:
        out = make_prid2011(a.out, a.prid_splits, frames=frames, size=size, seed=a.seed, occlusion=a.occlusion)
    print(f"wrote a synthetic {a.layout} tree to {out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    cli.run(main, "stafast.data.synth")
