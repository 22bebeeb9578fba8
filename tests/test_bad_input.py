"""Bad input: damaged frames and video files through both pipelines (DALI where installed, as in CI).

DALI 2.4 crashes the process on some damaged files instead of raising (see stafast/data/dali_guard.py),
so the DALI cases that would crash run in a subprocess, which also checks that no DALI worker
process outlives it.
"""
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from stafast.data import ClipPlan, DatasetError, Tracklet, build_loader
from stafast.data.dali_guard import container_problem, image_bytes, image_problem, ppm
from stafast.data.frames import read_image, to_model_input
from stafast.data.video import decode, probe, write_video

from .test_data import need_dali


def picture(rng, h=48, w=24) -> np.ndarray:
    """A smooth random RGB picture (JPEG keeps its detail, unlike noise)."""
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def encoded(image: np.ndarray, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **options)
    return buf.getvalue()


def with_random_tail(data: bytes, keep: int, rng) -> bytes:
    """The issue's damage: the first `keep` bytes kept, the rest random."""
    return data[:keep] + rng.integers(0, 256, len(data) - keep, dtype=np.uint8).tobytes()


def damages(rng) -> dict[str, bytes]:
    """Damaged frames by name; "trailing bytes" is a readable JPEG that DALI's parser still takes
    (the check sends it through Pillow, whose pixels DALI then decodes losslessly)."""
    jpeg, png = encoded(picture(rng), "JPEG", quality=90), encoded(picture(rng), "PNG")
    return {"jpeg 300 bytes + random": with_random_tail(jpeg, 300, rng),
            "jpeg truncated": jpeg[:len(jpeg) // 2],
            "empty file": b"",
            "not an image": b"frame 17 of a tracklet\n" * 20,
            "png 60 bytes + random": with_random_tail(png, 60, rng),
            "png truncated": png[:len(png) // 2],
            "jpeg trailing bytes": jpeg + b"\0junk" * 10}


def dali_decode(data: bytes):
    """DALI's CPU image decoder on one sample (a batch under 32 samples reads its header in the
    calling thread only, so a rejected header raises instead of crashing): (outcome, image)."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        return fn.decoders.image(fn.external_source(source=lambda: [np.frombuffer(data, np.uint8)], batch=True),
                                 device="cpu", output_type=types.RGB)
    p = pipe()
    p.build()
    try:
        (out,) = p.run()
    except RuntimeError as e:
        return ("decode error" if "Failed to decode sample" in str(e) else "parse error"), None
    return "ok", np.array(out[0])


def test_image_check_passes_only_what_dalis_parser_takes(tmp_path, rng_seed):
    """Every variant of a few JPEG/PNG files (cut anywhere in the headers, bytes overwritten, random
    tails) that `image_problem` passes is parsed by DALI's decoder (its parser's rejections are
    what crash it in large batches); those it flags reach DALI as Pillow's pixels, or raise."""
    need_dali()
    rng = np.random.default_rng(rng_seed)
    image = picture(rng)
    exif = Image.Exif()
    exif[0x0112] = 1
    originals = [encoded(image, "JPEG"), encoded(image, "JPEG", progressive=True, exif=exif.tobytes()),
                 encoded(image[..., 0], "JPEG"), encoded(image, "PNG"), encoded(image[..., :1].repeat(3, -1), "PNG",
                                                                                   bits=4, optimize=True)]
    variants = list(damages(rng).values())
    for data in originals:
        assert image_problem(data) is None
        variants += [data[:cut] for cut in rng.integers(0, min(len(data), 700), 8)]
        for at in rng.integers(0, min(len(data), 700), 8):
            variants.append(data[:at] + bytes(rng.integers(0, 256, 2, dtype=np.uint8)) + data[at + 2:])
    outcomes = {}
    for data in originals + variants:
        passed = image_problem(data) is None
        outcome, decoded = dali_decode(data)
        outcomes[passed, outcome] = outcomes.get((passed, outcome), 0) + 1
        assert not (passed and outcome == "parse error"), f"the check passed bytes DALI's parser rejects: {data[:64]!r}"
        try:
            pillow = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        except (OSError, ValueError):
            continue
        if not passed:  # what DALI gets instead: Pillow's pixels as a PPM, which it decodes exactly
            (tmp_path / "frame").write_bytes(data)
            outcome, decoded = dali_decode(image_bytes(str(tmp_path / "frame")).tobytes())
            assert outcome == "ok" and np.array_equal(decoded, pillow)
    print("(check passed, DALI's outcome): count", outcomes)
    assert outcomes.get((False, "parse error"), 0) >= 10 and outcomes.get((True, "ok"), 0) >= len(originals)


# ----------------------------------------------------------------------- both pipelines, end to end
def frame_tracklets(root, rng, damage: dict[str, bytes], count: int = 8, length: int = 6) -> list[Tracklet]:
    """`count` tracklets of `length` JPEG frames (PNG for the png damages); frame 0 of the first
    len(damage) tracklets replaced by the damaged files."""
    kinds = list(damage) + [None] * (count - len(damage))
    tracklets = []
    for k, kind in enumerate(kinds):
        ext = "png" if kind and kind.startswith("png") else "jpg"
        folder = os.path.join(root, f"t{k}")
        os.makedirs(folder)
        paths = [os.path.join(folder, f"{i:03d}.{ext}") for i in range(length)]
        for i, path in enumerate(paths):
            with open(path, "wb") as f:
                f.write(damage[kind] if kind and i == 0 else encoded(picture(rng), ext.replace("jpg", "JPEG")))
        tracklets.append(Tracklet(tuple(paths), k + 1, k % 2))
    return tracklets


def damaged_index_avi(path: str, rng) -> str:
    """An MJPEG AVI whose idx1 chunk claims ~4 GB and ends there: PyAV decodes every frame, DALI's
    in-memory reader follows the size past the end of its buffer (SIGSEGV in DALI 2.4)."""
    write_video(path, [picture(rng, 48, 24) for _ in range(8)], "mjpeg")
    data = bytearray(open(path, "rb").read())
    at = data.rindex(b"idx1")
    struct.pack_into("<I", data, at + 4, 0xF0000000)
    with open(path, "wb") as f:
        f.write(data[:at + 8])
    return path


SCRIPT = r"""
import json, os, signal, sys, time
import numpy as np
import torch
from stafast.data import ClipPlan, DatasetError, Tracklet, build_loader
from stafast.data.video import video_tracklet

print("imported", flush=True)
cfg = json.loads(sys.argv[1])
out = {}


def alive(pids):
    return [p for p in pids if os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"]


def run(name, tracklets, n, on_error, pipelines=("torch", "dali")):
    results, loaders = {}, []
    for pipeline in pipelines:
        t0 = time.time()
        loader = build_loader(ClipPlan(tracklets, n, "test"), len(tracklets), 32, 16, pipeline=pipeline,
                              workers=int(pipeline == "dali"), on_error=on_error)
        pids = loader.pipe._py_pool.pids() if pipeline == "dali" else []
        try:
            (batch,) = list(loader)
            results[pipeline] = {"clips": batch["clips"], "bad": loader.bad_frames, "pids": pids}
        except DatasetError as e:
            deadline = time.time() + 3
            while alive(pids) and time.time() < deadline:
                time.sleep(0.05)
            results[pipeline] = {"error": str(e), "pids": pids, "alive after the error": alive(pids)}
        loaders.append(loader)
        print(name, pipeline, f"{time.time() - t0:.1f} s", flush=True)
    if "clips" in results.get("torch", {}) and "clips" in results.get("dali", {}):
        out[name + " max difference"] = float((results["torch"]["clips"] - results["dali"]["clips"]).abs().max())
    for r in results.values():
        r.pop("clips", None)
    out[name] = results
    return loaders


frames = [Tracklet(tuple(f), i + 1, i % 2) for i, f in enumerate(cfg["crash"])]
run("raise", frames, 6, "raise")
videos = [video_tracklet(p) for p in cfg["videos"]]
keep = run("video", videos, 4, "raise")
print("RESULT", json.dumps(out), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # as a crash would: the DALI workers of `keep` must end by themselves
"""


def test_damaged_frames_and_videos_through_both_pipelines(tmp_path, rng_seed):
    """The issue's corrupt JPEG (300 header bytes + random) in a batch of 48 frames, which crashed
    DALI 4 runs in 5: the same DatasetError naming the file from both pipelines, and the DALI
    workers gone right after it; a video whose container points 4 GB past its end (a crash every
    time): the same clips from both; no DALI worker left when the process is killed."""
    need_dali()
    rng = np.random.default_rng(rng_seed)
    crash = frame_tracklets(str(tmp_path / "crash"), rng, {"issue": damages(rng)["jpeg 300 bytes + random"]})
    videos = [damaged_index_avi(str(tmp_path / "damaged.avi"), rng)]
    videos += [write_video(str(tmp_path / f"v{i}.avi"), [picture(rng) for _ in range(6)], "mjpeg") for i in range(3)]
    cfg = {"crash": [t.frames for t in crash], "videos": videos}
    with open(tmp_path / "out", "w+") as stdout, open(tmp_path / "err", "w+") as stderr:  # not pipes: workers
        returncode = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cfg)], stdout=stdout, stderr=stderr,
                                    timeout=600).returncode  # left behind would hold them open
    stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert returncode == -signal.SIGKILL and lines, f"exit {returncode}\n{stdout}\n{stderr[-3000:]}"
    out = json.loads(lines[0][len("RESULT "):])
    workers = out["video"]["dali"]["pids"]
    try:
        deadline = time.time() + 5
        while [p for p in workers if os.path.exists(f"/proc/{p}")] and time.time() < deadline:
            time.sleep(0.1)
        assert workers and not [p for p in workers if os.path.exists(f"/proc/{p}")], "DALI workers outlived the process"
    finally:
        for p in workers:
            if os.path.exists(f"/proc/{p}"):
                os.kill(p, signal.SIGKILL)
    raised = out["raise"]
    expected = f"cannot read frame {crash[0].frames[0]}: UnidentifiedImageError"
    assert raised["torch"]["error"].startswith(expected) and raised["dali"]["error"] == raised["torch"]["error"]
    assert raised["dali"]["pids"] and raised["dali"]["alive after the error"] == []
    assert out["video max difference"] < 1e-4 and "remuxed by PyAV" in stderr
    assert not [n for n in os.listdir("/dev/shm") if n.startswith("nvidia_dali")
                and os.stat(f"/dev/shm/{n}").st_mtime > time.time() - 600]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_every_damage_alike_in_both_pipelines(tmp_path, rng_seed, on_error):
    """Each damage of `damages` in the torch pipeline and in what the DALI pipeline's workers give
    its decoder (called here, without workers): the same DatasetError, or with on_error="skip" the
    same replacement (the next frame) and count; the readable JPEG with trailing bytes reaches DALI
    as Pillow's pixels."""
    from stafast.data.dali import _FrameSource
    rng = np.random.default_rng(rng_seed)
    damage = damages(rng)
    tracklets = frame_tracklets(str(tmp_path), rng, damage, count=len(damage))
    for kind, t in zip(damage, tracklets):
        plan = ClipPlan([t], len(t), "test")
        loader = build_loader(plan, 1, 48, 24, pipeline="torch", workers=0, on_error=on_error)
        source = _FrameSource(plan, 0, 0, 1, on_error)
        try:
            (batch,) = list(loader)
        except DatasetError as e:
            assert on_error == "raise" and str(e).startswith(f"cannot read frame {t.frames[0]}: "), kind
            with pytest.raises(DatasetError) as dali:
                source._read(t, np.arange(len(t)), 0)
            assert str(dali.value) == str(e), kind
            continue
        (data,), bad = source._read(t, np.arange(len(t)), 0)
        readable = kind == "jpeg trailing bytes"
        assert batch["bad_frames"] == bad == int(not readable), kind
        expected = read_image(t.frames[0 if readable else 1])
        assert bytes(data) == ppm(expected).tobytes() if readable else bytes(data) == open(t.frames[1], "rb").read()
        torch.testing.assert_close(batch["clips"][0, 0], to_model_input(expected[None], 48, 24)[0])


def test_video_container_check(tmp_path, rng_seed):
    """container_problem flags the AVI whose index points 4 GB past its end, not a sound file nor
    a truncated one (whose offsets past the end DALI's reader takes as the end of the file)."""
    rng = np.random.default_rng(rng_seed)
    bad = damaged_index_avi(str(tmp_path / "bad.avi"), rng)
    sound = write_video(str(tmp_path / "sound.webm"), [picture(rng) for _ in range(12)], "vp9", gop=4)
    cut = tmp_path / "cut.webm"
    cut.write_bytes(open(sound, "rb").read()[:os.path.getsize(sound) * 2 // 3])
    assert probe(str(cut)).readable < probe(sound).num_frames
    assert container_problem(sound) is None and container_problem(str(cut)) is None
    assert "points to byte" in container_problem(bad)
    assert decode(bad, range(8)).shape == (8, 48, 24, 3)


@pytest.mark.parametrize("workers", [0, 1])
def test_torch_pipeline_names_the_damaged_frame_in_one_line(tmp_path, rng_seed, workers):
    """From a DataLoader worker too, the DatasetError is the message alone (torch puts the
    worker's traceback into it)."""
    rng = np.random.default_rng(rng_seed)
    damage = damages(rng)
    tracklets = frame_tracklets(str(tmp_path), rng, {"png truncated": damage["png truncated"]}, count=2)
    loader = build_loader(ClipPlan(tracklets, 3, "test"), 2, 32, 16, pipeline="torch", workers=workers)
    with pytest.raises(DatasetError) as info:
        list(loader)
    assert str(info.value) == f"cannot read frame {tracklets[0].frames[0]}: OSError: image file is truncated"
