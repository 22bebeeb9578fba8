"""Augmentations (--augment): drawn by the plan once per clip, applied identically by both pipelines."""
import numpy as np
import pytest
import torch

from stafast.data import MARS, Augmentation, ClipAugment, ClipPlan, ShardedPlan, VideoFiles, build_loader, synth
from stafast.data.frames import MEAN, STD, to_model_input
from stafast.data.sampling import sample_frames

from .test_data import need_dali

ALL = ("crop", "flip", "erase")


@pytest.fixture(scope="module")
def mars_tree(tmp_path_factory):
    return synth.make_mars(str(tmp_path_factory.mktemp("mars")), ids=6, test_ids=2, cameras=2, tracklets=2,
                           frames=(2, 9), size=(40, 20), seed=4)


def grey_levels(a, b):
    """The largest difference of two normalised clips, in grey levels of 0..255 (the smallest std)."""
    return (a - b).abs().max().item() * min(STD) * 255


def test_draws_follow_the_papers_parameters():
    aug = Augmentation(ALL, 256, 128)
    assert aug.pad == 10 and Augmentation(ALL, 128, 64).pad == 5  # 10 pixels at 256x128, scaled with the height
    rng = np.random.default_rng(0)
    draws = [aug.draw(rng) for _ in range(4000)]
    assert 0.47 < np.mean([d.flip for d in draws]) < 0.53
    crops = np.array([d.crop for d in draws])
    assert crops.min() == -10 and crops.max() == 10 and abs(crops.mean()) < 0.3  # uniform on [-10, 10]^2
    boxes = np.array([d.erase for d in draws if d.erase is not None])
    assert 0.47 < len(boxes) / len(draws) < 0.53
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 256).all() and (left + w <= 128).all()
    area, ratio = h * w / (256 * 128), h / w
    assert 0.018 < area.min() < 0.03 and 0.3 < area.max() <= 0.41   # Zhong et al.: 2% to 40% of the frame,
    assert 0.28 < ratio.min() < 0.4 and 2.8 < ratio.max() < 3.5     # aspect ratios in [0.3, 3.33] (rounded boxes)


def test_one_stream_per_clip_replays_and_default_draws_are_unchanged(mars_tree):
    ds = MARS(mars_tree)
    aug = Augmentation(ALL, 40, 20)
    plan = ClipPlan(ds.train, 4, "train", seed=3, augment=aug, ids_per_batch=2, tracklets_per_id=2)
    again = ClipPlan(ds.train, 4, "train", seed=3, augment=aug, ids_per_batch=2, tracklets_per_id=2)
    samples = [plan.sample(1, p) for p in range(len(plan))]
    for p in (0, 5, len(plan) - 1):  # any position, in any order, in another process: the same draws
        t, frames, augment = again.sample(1, p)
        assert t == samples[p][0] and (frames == samples[p][1]).all() and augment == samples[p][2]
    assert len({s[2] for s in samples}) == len(samples)  # every clip its own draw
    assert {s[2] for s in samples} != {plan.sample(2, p)[2] for p in range(len(plan))}
    # a DDP rank draws what a single process draws at the same global position
    shard = ShardedPlan(plan, 1, 2, 4)
    assert shard.sample(1, 0)[2] == plan.sample(1, 2)[2]
    # without --augment (flips only) the stream is the one of the plan before augmentations had parameters
    default = ClipPlan(ds.train, 4, "train", seed=3, ids_per_batch=2, tracklets_per_id=2)
    for p in range(len(default)):
        t, frames, augment = default.sample(0, p)
        rng = np.random.default_rng([3, 0, p])
        assert (sample_frames(len(t), 4, "train", rng) == frames).all()
        assert augment == ClipAugment(flip=bool(rng.random() < 0.5))
    # test clips are never augmented
    test = ClipPlan(ds.gallery, 4, "test", augment=aug)
    assert all(test.sample(0, p)[2] == ClipAugment() for p in range(len(test)))


def test_torch_path_crops_flips_and_erases_the_whole_clip():
    frames = np.random.default_rng(1).integers(0, 256, (3, 8, 6, 3), dtype=np.uint8)
    plain = to_model_input(frames, 8, 6)
    black = -torch.tensor(MEAN).view(3, 1, 1) / torch.tensor(STD).view(3, 1, 1)
    out = to_model_input(frames, 8, 6, ClipAugment(flip=True, crop=(-2, 1), erase=(5, 0, 2, 3)))
    want = torch.empty_like(plain)
    want[:, :, :2] = black[None]                          # the window starts 2 rows above the frame
    want[:, :, 2:, 1:] = plain[:, :, :6, 1:].flip(-1)     # flip after the crop: column 1 leaves on the left
    want[:, :, 2:, :1] = black[None]
    want[:, :, 5:7, :3] = 0.0                             # the erased box: the mean colour
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)


def video_tree(tmp_path_factory, codec):
    root = synth.make_videos(str(tmp_path_factory.mktemp(f"videos-{codec}")), ids=4, test_ids=1, cameras=2,
                             tracklets=1, frames=(4, 9), size=(40, 20), distractors=0, seed=2, codec=codec)
    return VideoFiles(root).train


@pytest.mark.parametrize("source, size", [("frames", (48, 24)), ("mjpeg", (32, 16))])
def test_dali_and_torch_give_the_same_augmented_clips(mars_tree, tmp_path_factory, source, size):
    """The same plan with every augmentation: the same clips from both pipelines, to 1e-3 grey levels."""
    need_dali()
    tracklets = MARS(mars_tree).train if source == "frames" else video_tree(tmp_path_factory, source)
    plan = ClipPlan(tracklets, 4, "train", seed=11, augment=Augmentation(ALL, *size), ids_per_batch=2,
                    tracklets_per_id=2)
    drawn = [plan.sample(0, p)[2] for p in range(len(plan))]
    assert any(d.flip for d in drawn) and any(d.erase for d in drawn) and any(d.crop != (0, 0) for d in drawn)
    torch_batches = list(build_loader(plan, 4, *size, pipeline="torch", workers=1))
    dali_batches = list(build_loader(plan, 4, *size, pipeline="dali", workers=1))
    assert len(torch_batches) == len(dali_batches) > 0
    for a, b in zip(torch_batches, dali_batches):
        assert torch.equal(a["pids"], b["pids"])
        assert grey_levels(a["clips"], b["clips"]) < 1e-3
    unaugmented = list(build_loader(ClipPlan(tracklets, 4, "train", seed=11, augment=Augmentation(), ids_per_batch=2,
                                             tracklets_per_id=2), 4, *size, pipeline="torch", workers=1))
    assert grey_levels(unaugmented[0]["clips"], torch_batches[0]["clips"]) > 10  # the augmentation did something


def test_a_resumed_loader_reads_the_same_augmented_clips(mars_tree, pipeline="torch"):
    """(DALI reads the same draws from the same plan: the test above; its resume, test_data.py.)"""
    plan = ClipPlan(MARS(mars_tree).train, 3, "train", seed=3, augment=Augmentation(ALL, 32, 16), ids_per_batch=2,
                    tracklets_per_id=2)  # 6 ids: 3 batches
    full = list(build_loader(plan, 4, 32, 16, pipeline=pipeline, workers=1, start_epoch=1))
    resumed = list(build_loader(plan, 4, 32, 16, pipeline=pipeline, workers=1, start_epoch=1, start=1))
    assert len(resumed) == 2
    for a, b in zip(full[1:], resumed):
        torch.testing.assert_close(a["clips"], b["clips"], rtol=0, atol=0)


def test_bad_augmentations():
    with pytest.raises(ValueError, match=r"unknown augmentation\(s\) \['jitter'\]"):
        Augmentation(("flip", "jitter"))
    with pytest.raises(ValueError, match=r"need the model input size, got height=None"):
        Augmentation(("erase",))
    plan = ClipPlan([synth_tracklet()], 2, "train", augment=Augmentation(("crop",), 32, 16))
    with pytest.raises(ValueError, match="drawn for 32x16 clips, but the pipeline makes 48x24 ones"):
        build_loader(plan, 1, 48, 24, pipeline="torch")


def synth_tracklet():
    from stafast.data import Tracklet
    return Tracklet(("a.jpg", "b.jpg"), 1, 1)


def test_the_augment_flag():
    from stafast.config import TrainConfig
    from stafast.data import parse_augment
    assert parse_augment("erase, flip,crop") == ("erase", "flip", "crop") and parse_augment("none") == ()
    assert Augmentation(parse_augment("erase,flip,crop"), 8, 4).names == ("crop", "flip", "erase")  # applied in order
    with pytest.raises(ValueError, match=r"augment='flip,blur': unknown \['blur'\]"):
        TrainConfig.create("synthetic", augment="flip,blur")
