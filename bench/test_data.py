"""Clip throughput of the two frame pipelines on the same synthetic MARS data (256x128 JPEGs):
DALI (decoding on the CPU here, `mixed` nvJPEG on a GPU) against the torch DataLoader with the
same number of CPU workers."""
import time

import pytest
import torch

from harness import DEVICE
from stafast.data import MARS, ClipPlan, build_loader, dali_available, synth

BATCH, FRAMES, WORKERS = 8, 6, 2


@pytest.fixture(scope="module")
def mars(tmp_path_factory):
    root = synth.make_mars(str(tmp_path_factory.mktemp("bench_mars")), ids=8, test_ids=2, cameras=2, tracklets=2,
                           frames=(12, 24), size=(256, 128), seed=0)
    return MARS(root)


@pytest.mark.parametrize("pipeline", ["torch", "dali"])
def test_data_pipeline(benchmark, mars, pipeline):
    if pipeline == "dali" and not dali_available():
        pytest.skip("dali: nvidia-dali is not installed")
    plan = ClipPlan(mars.train, FRAMES, "train", seed=0, ids_per_batch=4, tracklets_per_id=2)
    loader = build_loader(plan, BATCH, 256, 128, pipeline=pipeline, workers=WORKERS, device=DEVICE)
    benchmark.group = f"data pipeline: train clips B={BATCH} N={FRAMES} 256x128 JPEG, {WORKERS} workers, {DEVICE}"
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
    benchmark.extra_info.update(op="data", impl=pipeline, clips_per_epoch=clips,
                                clips_per_s=clips / benchmark.stats.stats.median, wall_s=time.perf_counter() - t0)
