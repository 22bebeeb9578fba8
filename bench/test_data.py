"""Clip throughput of the two pipelines on the same synthetic data at 256x128, with the same number
of CPU workers:
- frame files (MARS layout, JPEG): DALI (decoding on the CPU here, `mixed` nvJPEG on a GPU)
  against the torch DataLoader (Pillow);
- video files (synth --layout videos, one file per tracklet, 12-24 frames): DALI's video decoder
  (on the CPU here: VP9 and MJPEG; `mixed` NVDEC on a GPU, H.264 too) against the torch
  DataLoader decoding the same sampled frames with PyAV."""
import time

import pytest
import torch

from harness import DEVICE
from stafast.data import MARS, ClipPlan, VideoFiles, build_loader, dali_available, synth
from stafast.data.dali import dali_decodes

BATCH, FRAMES, WORKERS = 8, 6, 2
CODECS = ("vp9", "mjpeg", "h264")


@pytest.fixture(scope="module")
def mars(tmp_path_factory):
    root = synth.make_mars(str(tmp_path_factory.mktemp("bench_mars")), ids=8, test_ids=2, cameras=2, tracklets=2,
                           frames=(12, 24), size=(256, 128), seed=0)
    return MARS(root)


@pytest.fixture(scope="module")
def video_sets(tmp_path_factory):
    """codec -> the synthetic video set (16 training ids, 2 cameras x 2 tracklets), made on first use."""
    pytest.importorskip("av", reason="the video sets are written and probed with PyAV (pip install av)")
    made = {}

    def get(codec):
        if codec not in made:
            root = synth.make_videos(str(tmp_path_factory.mktemp(f"bench_{codec}")), ids=16, test_ids=0, cameras=2,
                                     tracklets=2, frames=(12, 24), size=(256, 128), distractors=0, seed=0, codec=codec)
            made[codec] = VideoFiles(root)
        return made[codec]
    return get


def measure(benchmark, loader, group: str, impl: str, **info) -> None:
    """Clips/s of whole epochs of `loader` (the batches copied to the GPU there), after one epoch of start-up."""
    benchmark.group = group
    clips = len(loader) * BATCH

    def epoch():
        for batch in loader:
            if DEVICE == "cuda":
                batch["clips"].cuda(non_blocking=True)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    epoch()  # start-up (worker processes, pipeline build) outside the timing
    t0 = time.perf_counter()
    benchmark.pedantic(epoch, rounds=3, iterations=1)
    benchmark.extra_info.update(op="data", impl=impl, clips_per_epoch=clips,
                                clips_per_s=clips / benchmark.stats.stats.median, wall_s=time.perf_counter() - t0,
                                **info)


@pytest.mark.parametrize("pipeline", ["torch", "dali"])
def test_data_pipeline(benchmark, mars, pipeline):
    if pipeline == "dali" and not dali_available():
        pytest.skip("dali: nvidia-dali is not installed")
    plan = ClipPlan(mars.train, FRAMES, "train", seed=0, ids_per_batch=4, tracklets_per_id=2)
    loader = build_loader(plan, BATCH, 256, 128, pipeline=pipeline, workers=WORKERS, device=DEVICE)
    measure(benchmark, loader, f"data pipeline: train clips B={BATCH} N={FRAMES} 256x128 JPEG, {WORKERS} workers, "
                               f"{DEVICE}", pipeline)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("pipeline", ["torch", "dali"])
def test_video_pipeline(benchmark, video_sets, pipeline, codec):
    if pipeline == "dali" and not dali_available():
        pytest.skip("dali: nvidia-dali is not installed")
    plan = ClipPlan(video_sets(codec).train, FRAMES, "train", seed=0, ids_per_batch=4, tracklets_per_id=2)
    if pipeline == "dali" and dali_decodes(plan, DEVICE == "cuda"):
        pytest.skip(f"dali: {codec} is not decoded by DALI on {DEVICE}")
    loader = build_loader(plan, BATCH, 256, 128, pipeline=pipeline, workers=WORKERS, device=DEVICE)
    assert type(loader).__name__ == ("DALIClipLoader" if pipeline == "dali" else "TorchClipLoader")
    decoder = ("mixed (NVDEC)" if DEVICE == "cuda" else "cpu") if pipeline == "dali" else "PyAV"
    measure(benchmark, loader, f"data pipeline: train clips B={BATCH} N={FRAMES} 256x128 {codec} video files, "
                               f"{WORKERS} workers, {DEVICE}", pipeline, codec=codec, decoder=decoder)
