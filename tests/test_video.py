"""Tracklets as video files: the manifest dataset, frame counts, the DALI and PyAV decoding paths."""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from stafast import embed
from stafast import evaluate as E
from stafast import train as T
from stafast.data import (Augmentation, ClipPlan, DatasetError, VideoFiles, build_loader, dali_available, load_dataset,
                          synth)
from stafast.data.frames import to_model_input
from stafast.data.manifest import write_manifest
from stafast.data.video import decode, probe, video_tracklet, write_video

from .test_data import need_dali

av = pytest.importorskip("av") if not os.environ.get("CI") else __import__("av")

TINY = ["--arch", "resnet18", "--heads", "2", "--hidden", "8", "--frames", "3", "--height", "32", "--width", "16",
        "--ids-per-batch", "2", "--tracklets-per-id", "2", "--workers", "1", "--no-progress", "--lr", "0.01"]


def make_set(root, codec, gop=3, **kwargs):
    """A tiny video set: 4 training ids, 3 test ids, 2 cameras, 1-9 frames of 32x16."""
    kwargs = {"ids": 4, "test_ids": 3, "cameras": 2, "tracklets": 2, "frames": (1, 9), "size": (32, 16),
              "distractors": 1, "seed": 2, **kwargs}
    return synth.make_videos(str(root), codec=codec, gop=gop, **kwargs)


@pytest.fixture(scope="module")
def vp9_set(tmp_path_factory):
    return make_set(tmp_path_factory.mktemp("vp9"), "vp9")


@pytest.fixture(scope="module")
def mjpeg_set(tmp_path_factory):
    return make_set(tmp_path_factory.mktemp("mjpeg"), "mjpeg")


def frames_of(n, h=32, w=16, seed=0):
    """n distinct noisy frames with sharp colour edges (where chroma handling shows)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img[2 + i % (h - 6):6 + i % (h - 6), 3:9] = [255, 40, 0]
        out.append(img)
    return out


# ------------------------------------------------------------------------------- the manifest set
def test_manifest_dataset_reads_frame_counts_from_the_containers(vp9_set):
    ds = load_dataset("videos", vp9_set)
    assert isinstance(ds, VideoFiles) and ds.num_train_pids == 4
    assert {t.pid for t in ds.train} == set(range(4))
    rows = open(os.path.join(vp9_set, "manifest.csv")).read().split("\n")[1:]
    assert len(ds.train) + len(ds.query) + len(ds.gallery) == len([r for r in rows if r])
    for t in ds.train + ds.query + ds.gallery:
        with av.open(t.path) as c:
            assert len(t) == t.readable == sum(1 for _ in c.decode(video=0)) >= 1
        assert t.codec == "vp9"
    for q in ds.query:  # each query id has a gallery tracklet in another camera
        assert any(g.pid == q.pid and g.camid != q.camid for g in ds.gallery)


def test_json_manifest_and_a_manifest_file_as_root(vp9_set, tmp_path):
    root = shutil.copytree(vp9_set, tmp_path / "set")
    csv_ds = VideoFiles(str(root))
    rows = [{"path": os.path.relpath(t.path, root), "pid": t.pid, "camid": t.camid, "split": "gallery"}
            for t in csv_ds.gallery]
    os.remove(root / "manifest.csv")
    write_manifest(str(root / "manifest.json"), rows)
    for r in (str(root), str(root / "manifest.json")):
        ds = VideoFiles(r)
        assert [(len(t), t.pid) for t in ds.gallery] == [(len(t), t.pid) for t in csv_ds.gallery]
        assert ds.train == [] and ds.query == []


@pytest.mark.parametrize("edit, message", [
    (lambda rows: [{k: v for k, v in r.items() if k != "camid"} for r in rows],
     r"manifest.csv: the header \['path', 'pid', 'split'\] lacks the column\(s\) camid"),
    (lambda rows: rows[:2] + [{**rows[2], "pid": "seven"}] + rows[3:], r"manifest.csv row 3: pid must be an integer, got 'seven'"),
    (lambda rows: rows[:1] + [{**rows[1], "split": "test"}], r"manifest.csv row 2: split must be one of .*got 'test'"),
    (lambda rows: rows[:3] + [{**rows[3], "path": "videos/none.webm"}],
     r"manifest.csv row 4: video .*videos/none.webm does not exist"),
    (lambda rows: rows[:2] + [{**rows[2], "path": "garbage.webm"}], r"manifest.csv row 3: cannot read video .*garbage.webm"),
])
def test_bad_manifests_name_the_file_and_row(vp9_set, tmp_path, edit, message):
    root = shutil.copytree(vp9_set, tmp_path / "set")
    (root / "garbage.webm").write_bytes(b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 8)
    import csv
    rows = list(csv.DictReader(open(root / "manifest.csv")))
    rows = edit(rows)
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DatasetError, match=message):
        VideoFiles(str(root))


def test_manifest_rows_with_a_wrong_field_count_or_json_keys(tmp_path):
    (tmp_path / "manifest.csv").write_text("path,pid,camid,split\na.webm,1,2\n")
    with pytest.raises(DatasetError, match=r"manifest.csv row 1: 3 fields, but the header has 4"):
        VideoFiles(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps([{"path": "a.webm", "pid": 1, "split": "train"}]))
    with pytest.raises(DatasetError, match=r"holds both of manifest.csv / manifest.json"):
        VideoFiles(str(tmp_path))
    os.remove(tmp_path / "manifest.csv")
    with pytest.raises(DatasetError, match=r"manifest.json row 1: missing camid"):
        VideoFiles(str(tmp_path))
    with pytest.raises(ValueError, match="--root is required for --dataset videos"):
        load_dataset("videos")


# ------------------------------------------------------------------------------ counts, decoding
@pytest.mark.parametrize("codec", ["vp9", "mjpeg", "h264"])
def test_sampled_frames_decode_as_in_a_full_pass(tmp_path, codec):
    """PyAV decodes only what the sampled frames need (MJPEG: those frames; VP9: from the keyframe
    before each, here every 4 frames; H.264 with B-frames: up to the last one), with the same
    frames as decoding the whole file, in the order asked, repeats included."""
    ext = {"vp9": ".webm", "mjpeg": ".avi", "h264": ".mp4"}[codec]
    path = write_video(str(tmp_path / f"v{ext}"), frames_of(19), codec, gop=4)
    info = probe(path)
    assert (info.num_frames, info.readable, info.codec, info.height, info.width) == (19, 19, codec, 32, 16)
    with av.open(path) as c:
        full = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    everything = decode(path, range(19))
    # PyAV's default conversion upsamples chroma by nearest neighbour: far off at colour edges
    assert np.abs(everything.astype(int) - full).max() > 20
    for idx in ([0, 5, 5, 17, 9, 18], [12], [18, 0], [3, 4, 5, 6, 7, 8]):
        np.testing.assert_array_equal(decode(path, idx), everything[idx])


def test_which_packets_a_clip_decodes():
    from collections import namedtuple

    from stafast.data.video import _packets_to_decode
    P = namedtuple("P", "is_keyframe")
    intra = [P(True)] * 10
    assert [j for j, d in enumerate(_packets_to_decode(intra, [2, 7], list(range(10)))) if d] == [2, 7]
    gops = [P(j % 4 == 0) for j in range(12)]  # keyframes at 0, 4, 8
    assert [j for j, d in enumerate(_packets_to_decode(gops, [1, 9, 10], list(range(12)))) if d] == [0, 1, 8, 9, 10]
    reordered = [0, 3, 1, 2, 4, 5]  # presentation index of each packet (B-frames)
    assert _packets_to_decode([P(j == 0) for j in range(6)], [1], reordered) == [True] * 3 + [False] * 3


@pytest.mark.parametrize("ext", [".avi", ".webm"])
def test_a_truncated_file_declares_more_frames_than_it_holds(tmp_path, ext):
    codec = "mjpeg" if ext == ".avi" else "vp9"
    path = write_video(str(tmp_path / f"v{ext}"), frames_of(30), codec, gop=30)
    data = open(path, "rb").read()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[:len(data) // 2])
    info = probe(str(cut))
    assert info.num_frames == 30 and 1 <= info.readable < 30
    np.testing.assert_array_equal(decode(str(cut), [0, info.readable - 1]), decode(path, [0, info.readable - 1]))


def truncated_copy(root, tmp_path):
    """The longest test tracklet of `root` cut to half its bytes; returns (dataset, its tracklet)."""
    ds = load_dataset("videos", root)
    victim = max(ds.gallery, key=len)
    data = open(victim.path, "rb").read()
    cut = tmp_path / ("cut" + os.path.splitext(victim.path)[1])
    cut.write_bytes(data[:len(data) * 2 // 3])
    t = video_tracklet(str(cut), victim.pid, victim.camid)
    assert t.num_frames == len(victim) and 1 <= t.readable < len(victim)
    return ds, t


@pytest.mark.parametrize("pipeline", ["torch", "dali"])
def test_truncated_video_raises_with_its_path_or_is_skipped(mjpeg_set, tmp_path, pipeline):
    if pipeline == "dali":
        need_dali()
    ds, bad = truncated_copy(mjpeg_set, tmp_path)
    n = len(bad)  # test sampling with N = its frame count: every frame, the missing ones included
    plan = ClipPlan([bad] + [t for t in ds.gallery if len(t) > 1][:2], num_frames=n, mode="test")
    with pytest.raises(DatasetError, match=rf"cannot decode frame {bad.readable} of video {bad.path}: the file holds "
                                           rf"{bad.readable} of the {n} frames"):
        list(build_loader(plan, 3, 32, 16, pipeline=pipeline, workers=1))
    loader = build_loader(plan, 3, 32, 16, pipeline=pipeline, workers=1, on_error="skip")
    (batch,) = list(loader)
    assert batch["bad_frames"] == loader.bad_frames == n - bad.readable
    last = to_model_input(decode(bad.path, [bad.readable - 1]), 32, 16)[0]
    for i in range(bad.readable, n):  # the missing frames are the last readable one
        torch.testing.assert_close(batch["clips"][0, i], last, rtol=0, atol=1e-4)
    assert not torch.equal(batch["clips"][0, 0], last)


FORK_AFTER_CONVERSION = """
import sys
import av
from stafast.data import ClipPlan, build_loader
from stafast.data.video import video_tracklet
t = video_tracklet(sys.argv[1], 1, 1)
with av.open(sys.argv[1]) as c:  # a conversion in the parent, with PyAV's default (multithreaded) swscale
    next(c.decode(video=0)).to_ndarray(format="rgb24")
(batch,) = list(build_loader(ClipPlan([t], 3, "test"), 1, 32, 16, pipeline="torch", workers=1))
print("x".join(map(str, batch["clips"].shape)))
"""


def test_torch_workers_decode_videos_after_the_parent_converted_a_frame(tmp_path):
    """With PyAV >= 19 (FFmpeg 9), a worker forked after its parent converted a frame blocks in its
    own first conversion; video plans therefore start their workers from a forkserver."""
    from stafast.data.loader import worker_context
    path = write_video(str(tmp_path / "v.webm"), frames_of(5), "vp9")
    assert worker_context(ClipPlan([video_tracklet(path, 1, 1)], 3, "test"), 1).get_start_method() == "forkserver"
    assert worker_context(ClipPlan([video_tracklet(path, 1, 1)], 3, "test"), 0) is None
    proc = subprocess.Popen([sys.executable, "-c", FORK_AFTER_CONVERSION, path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the parent and its blocked worker
        pytest.fail("the DataLoader worker blocked in its first frame conversion (forked after the parent's)")
    assert proc.returncode == 0 and out.split()[-1] == "1x3x3x32x16", err[-2000:]


def test_video_shorter_than_the_clip_repeats_its_frames(tmp_path):
    path = write_video(str(tmp_path / "two.webm"), frames_of(2), "vp9")
    t = video_tracklet(path, 1, 1)
    for mode in ("train", "test"):
        plan = ClipPlan([t], 6, mode, seed=3, augment=Augmentation())
        (batch,) = list(build_loader(plan, 1, 32, 16, pipeline="torch", workers=0))
        clip = batch["clips"][0]
        assert clip.shape == (6, 3, 32, 16)
        frames = to_model_input(decode(path, [0, 1]), 32, 16)
        for i, j in enumerate([0, 0, 0, 1, 1, 1]):  # chunk n of 2 frames into 6 is frame floor(2n / 6)
            torch.testing.assert_close(clip[i], frames[j], rtol=0, atol=1e-5)


@pytest.mark.parametrize("codec, mode, size", [("vp9", "train", (48, 24)), ("mjpeg", "test", (32, 16))])
def test_dali_and_pyav_give_the_same_clips(request, codec, mode, size):
    """Same plan: the same clips.  Both decode with FFmpeg's decoders and the same YUV -> RGB
    conversion (video.to_rgb), so the decoded frames are identical; after the float resize the
    largest difference is ~2e-3 grey levels (as on the image path).  Tracklets shorter than N
    (frames repeated) and VP9 keyframes every 3 frames (seeks) are part of the plan."""
    need_dali()
    ds = load_dataset("videos", request.getfixturevalue(f"{codec}_set"))
    kwargs = dict(ids_per_batch=2, tracklets_per_id=2) if mode == "train" else {}
    plan = ClipPlan(ds.train if mode == "train" else ds.gallery, 6, mode, seed=7, **kwargs)
    assert min(len(t) for t in plan.tracklets) < 6 < max(len(t) for t in plan.tracklets)
    torch_batches = list(build_loader(plan, 4, *size, pipeline="torch", workers=1))
    dali_loader = build_loader(plan, 4, *size, pipeline="dali", workers=1)
    assert type(dali_loader).__name__ == "DALIClipLoader"
    dali_batches = list(dali_loader)
    assert len(torch_batches) == len(dali_batches) > 1
    for a, b in zip(torch_batches, dali_batches):
        assert torch.equal(a["pids"], b["pids"]) and torch.equal(a["camids"], b["camids"])
        assert a["clips"].shape == b["clips"].shape == (len(a["pids"]), 6, 3, *size)
        grey_levels = (a["clips"] - b["clips"]).abs().max().item() * 0.229 * 255
        assert grey_levels < 0.01


def tagged_vp9(path, frames, colorspace, color_range):
    """A VP9 file whose stream carries colour tags (1: BT.709; range 1 limited, 2 full)."""
    with av.open(path, "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=25, options={"deadline": "realtime", "cpu-used": "8"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.codec_context.colorspace, stream.codec_context.color_range = colorspace, color_range
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_pyav_frames_are_those_of_dalis_cpu_decoder(tmp_path):
    """video.decode returns DALI's CPU decoder's uint8 frames exactly: MJPEG (full-range YUV) and
    VP9, also when the stream is tagged BT.709 or full range (DALI converts with BT.601 and the
    range of the pixel format whatever the tags say; PyAV by default would follow the tags)."""
    need_dali()
    from nvidia.dali import fn, pipeline_def
    paths = [write_video(str(tmp_path / "m.avi"), frames_of(7), "mjpeg"),
             write_video(str(tmp_path / "v.webm"), frames_of(7), "vp9", gop=3),
             tagged_vp9(str(tmp_path / "t709.webm"), frames_of(7), 1, 1),
             tagged_vp9(str(tmp_path / "tfull.webm"), frames_of(7), 1, 2)]
    idx = np.array([6, 0, 2, 2, 5], dtype=np.int32)

    @pipeline_def(batch_size=len(paths), num_threads=1, device_id=None)
    def pipe():
        data = fn.external_source(source=lambda info: np.fromfile(paths[info.idx_in_batch], np.uint8), batch=False)
        return fn.decoders.video(data, device="cpu", frames=idx.tolist())

    p = pipe()
    p.build()
    (out,) = p.run()
    for k, path in enumerate(paths):
        np.testing.assert_array_equal(np.array(out[k]), decode(path, idx), err_msg=path)
    with av.open(paths[2]) as c:  # PyAV's default conversion follows the BT.709 tag: not DALI's
        default = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])[idx]
    assert np.abs(default.astype(int) - np.array(out[2])).max() > 5


def test_auto_pipeline_leaves_h264_to_pyav_on_the_cpu(tmp_path):
    t = video_tracklet(write_video(str(tmp_path / "v.mp4"), frames_of(4), "h264"))
    plan = ClipPlan([t], 3, "test")
    assert type(build_loader(plan, 1, 32, 16, workers=0)).__name__ == "TorchClipLoader"
    need_dali()
    with pytest.raises(DatasetError, match=rf"CPU video decoder takes vp8/vp9/mjpeg, but {t.path} is h264"):
        build_loader(plan, 1, 32, 16, pipeline="dali", workers=0)


# ------------------------------------------------------------------------------------- the CLIs
def test_synth_train_evaluate_embed_on_video_files(tmp_path, monkeypatch):
    """The issue's acceptance commands at toy sizes: synth --layout videos, train with both
    pipelines, evaluate, and embed (DALI when installed, the same embeddings as PyAV's)."""
    root = str(tmp_path / "D")
    synth.main(["--layout", "videos", "--out", root, "--ids", "4", "--test-ids", "3", "--cameras", "2",
                "--min-frames", "3", "--max-frames", "7", "--height", "32", "--width", "16"])
    assert os.path.isfile(os.path.join(root, "manifest.csv"))
    pipelines = ["torch"] + (["dali"] if dali_available() else [])
    for pipeline in pipelines:
        out = tmp_path / pipeline
        result = T.main(["--dataset", "videos", "--root", root, "--output", str(out), *TINY, "--pipeline", pipeline,
                         "--stages", "4", "--epochs", "1", "--max-steps", "2", "--no-eval"])
        assert result["stopped"] and os.path.isfile(out / "checkpoint.pt")
    ckpt = str(tmp_path / "torch" / "checkpoint.pt")
    ds = load_dataset("videos", root)
    summary = E.main(["--dataset", "videos", "--root", root, "--checkpoint", ckpt, "--pipeline", "torch",
                      "--workers", "0"])
    assert summary["per_split"][0]["num_query"] == len(ds.query) and 0 <= summary["rank1"] <= 1
    loaders = []
    real = E.build_loader
    monkeypatch.setattr(E, "build_loader", lambda *a, **k: loaders.append(real(*a, **k)) or loaders[-1])
    videos = [t.path for t in ds.gallery[:3]]
    auto = embed.main(["--checkpoint", ckpt, "--output", str(tmp_path / "auto.npy"), "--workers", "1", *videos])
    pyav = embed.main(["--checkpoint", ckpt, "--output", str(tmp_path / "pyav.npy"), "--workers", "0",
                       "--pipeline", "torch", *videos])
    assert [type(x).__name__ for x in loaders] == [("DALI" if dali_available() else "Torch") + "ClipLoader",
                                                   "TorchClipLoader"]
    assert auto.shape == (3, 128)
    np.testing.assert_allclose(auto, pyav, atol=1e-4)
