import json
import os
import shutil

import numpy as np
import pytest
import scipy.io
import torch

from stafast.data import ILIDSVID, MARS, PRID2011, ClipPlan, DatasetError, build_loader
from stafast.data import synth
from stafast.data.frames import read_image, to_model_input

from .conftest import shared_data


def need_dali():
    """DALI is part of the install (make test); CI must not skip its tests silently."""
    if os.environ.get("CI"):
        import nvidia.dali  # noqa: F401
    else:
        pytest.importorskip("nvidia.dali")


@pytest.fixture(scope="module")
def mars_tree(tmp_path_factory):
    return synth.make_mars(str(tmp_path_factory.mktemp("mars")), ids=6, test_ids=5, cameras=3, tracklets=2,
                           frames=(1, 9), size=(32, 16), seed=1)


@pytest.fixture()
def mars_copy(mars_tree, tmp_path):
    return shutil.copytree(mars_tree, tmp_path / "mars")


@pytest.mark.slow
def test_mars_structure_full_scale(tmp_path):
    mars_info = shared_data("mars", "info")
    root = synth.make_mars_structure(str(tmp_path), mars_info, max_frames=1, size=(16, 8))
    official, toolbox = MARS(root, "official"), MARS(root, "toolbox")
    assert len(official.train) == 8298 and official.num_train_pids == 625
    assert len(official.query) == len(toolbox.query) == 1980
    assert len(official.gallery) == 12180 and len(toolbox.gallery) == 9330
    assert {t.pid for t in official.train} == set(range(625))
    assert sum(t.pid == -1 for t in official.gallery) == 870 and sum(t.pid == 0 for t in official.gallery) == 3248
    real = scipy.io.loadmat(os.path.join(mars_info, "tracks_test_info.mat"))["track_test_info"]
    assert [(t.pid, t.camid) for t in official.gallery] == [tuple(r) for r in real[:, 2:].tolist()]


def test_small_mars_tree(mars_tree):
    ds = MARS(mars_tree)
    assert ds.num_train_pids == 6 and len(ds.train) >= 6 * 2 * 2
    for t in ds.train + ds.gallery:
        assert all(os.path.isfile(f) for f in t.frames)
        names = [os.path.basename(f) for f in t.frames]
        assert names == sorted(names) and len({n[:11] for n in names}) == 1  # one tracklet, frames in order
    assert all(t.pid > 0 for t in ds.query)
    for t in ds.query:  # every query id has a gallery tracklet in another camera
        assert any(g.pid == t.pid and g.camid != t.camid for g in ds.gallery)


def test_ilidsvid_tree(tmp_path):
    root = synth.make_ilidsvid(str(tmp_path), persons=300, frames=(1, 2), size=(16, 8), seed=2)
    for split in range(10):
        ds = ILIDSVID(root, split)
        assert len(ds.query) == len(ds.gallery) == 150 and len(ds.train) == 300 and ds.num_train_pids == 150
        assert {t.camid for t in ds.query} == {1} and {t.camid for t in ds.gallery} == {2}
        assert {t.pid for t in ds.query} == {t.pid for t in ds.gallery}
    with pytest.raises(ValueError, match=r"split must be in 0..9, got 10"):
        ILIDSVID(root, 10)


def test_frames_sorted_by_integer_number(tmp_path):
    root = synth.make_ilidsvid(str(tmp_path), persons=4, frames=(1, 1), size=(8, 4), splits=1)
    folder = os.path.join(root, "i-LIDS-VID", "sequences", "cam1")
    person = sorted(os.listdir(folder))[0]
    seq = os.path.join(folder, person)
    src = os.path.join(seq, os.listdir(seq)[0])
    for n in (9, 10, 100):  # listing or string order would give 10, 100, 9
        shutil.copy(src, os.path.join(seq, f"cam1_{person}_{n}.png"))
    os.remove(src)
    ds = ILIDSVID(root, 0)
    t = next(t for t in ds.query + ds.train if os.path.dirname(t.frames[0]) == seq)
    assert [os.path.basename(f) for f in t.frames] == [f"cam1_{person}_{n}.png" for n in (9, 10, 100)]


def test_prid2011_tree_with_the_published_splits(tmp_path):
    prid_splits = shared_data("prid2011", "splits_prid2011.json")
    root = synth.make_prid2011(str(tmp_path), prid_splits, frames=(1, 2), size=(16, 8), seed=3)
    published = json.load(open(prid_splits))
    for split in range(10):
        ds = PRID2011(root, split)
        assert len(ds.query) == len(ds.gallery) == 89 and len(ds.train) == 178 and ds.num_train_pids == 89
        assert {t.pid for t in ds.query} == {int(p[-4:]) for p in published[split]["test"]}


# ------------------------------------------------------------------------------------ bad inputs
def test_missing_info_file(mars_copy):
    os.remove(mars_copy / "info" / "tracks_test_info.mat")
    with pytest.raises(DatasetError, match=r"missing MATLAB file with variable 'track_test_info'.*tracks_test_info.mat"):
        MARS(str(mars_copy))


def test_wrong_mat_variable(mars_copy):
    scipy.io.savemat(mars_copy / "info" / "query_IDX.mat", {"queries": np.ones((1, 3), np.uint16)})
    with pytest.raises(DatasetError, match=r"query_IDX.mat has no variable 'query_IDX' \(found \['queries'\]\)"):
        MARS(str(mars_copy))


def test_tracklet_with_missing_frames(mars_copy):
    ds = MARS(str(mars_copy))
    victim = ds.train[3].frames[-1]
    os.remove(victim)
    with pytest.raises(DatasetError, match=rf"frame {victim} is missing"):
        MARS(str(mars_copy))


def corrupt_first_frame(root):
    ds = MARS(str(root))
    t = next(t for t in ds.query if len(t) >= 2)
    with open(t.frames[0], "r+b") as f:
        f.seek(20)
        f.write(b"\x00" * 200)
        f.truncate(300)
    return ds, t


@pytest.mark.parametrize("pipeline", ["torch", "dali"])
def test_corrupt_jpeg_raises_with_its_path_or_is_skipped(mars_copy, pipeline):
    if pipeline == "dali":
        need_dali()
    ds, bad = corrupt_first_frame(mars_copy)
    plan = ClipPlan([bad] + [t for t in ds.query if t != bad][:3], num_frames=2, mode="test")
    with pytest.raises(DatasetError, match=rf"cannot read frame {bad.frames[0]}"):
        list(build_loader(plan, 4, 32, 16, pipeline=pipeline, workers=1))
    loader = build_loader(plan, 4, 32, 16, pipeline=pipeline, workers=1, on_error="skip")
    (batch,) = list(loader)
    assert batch["bad_frames"] == 1 and loader.bad_frames == 1
    neighbour = to_model_input(read_image(bad.frames[1])[None], 32, 16)[0]
    torch.testing.assert_close(batch["clips"][0, 0], neighbour)  # frame 0 replaced by frame 1


@pytest.mark.parametrize("pipeline", ["torch", "dali"])
def test_one_frame_tracklet_with_six_frames_per_clip(mars_tree, pipeline):
    if pipeline == "dali":
        need_dali()
    ds = MARS(mars_tree)
    single = [t for t in ds.train + ds.gallery if len(t) == 1]
    assert single, "the fixture has 1-frame tracklets (frames=(1, 9))"
    plan = ClipPlan(single[:2] * 2, num_frames=6, mode="train", seed=0)
    batch = next(iter(build_loader(plan, 4, 32, 16, pipeline=pipeline, workers=1)))
    clip = batch["clips"][0]
    assert clip.shape == (6, 3, 32, 16)
    for i in range(1, 6):
        torch.testing.assert_close(clip[i], clip[0])


def test_dali_loader_decodes_on_the_device_it_is_given(monkeypatch):
    """device="cuda:1" decodes on GPU 1 and puts the clips there; "cuda" alone means the current GPU."""
    from stafast.data.dali import cuda_device_id
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert cuda_device_id("cuda:1") == 1 and cuda_device_id(torch.device("cuda", 0)) == 0
    assert cuda_device_id("cuda") == 3 and cuda_device_id("cpu") is None

# ------------------------------------------------------------------------------ pipelines, plan
@pytest.mark.parametrize("mode, size", [("train", (32, 16)), ("test", (48, 24))])
def test_dali_and_torch_give_the_same_clips(mars_tree, mode, size):
    """Same plan, same seed: identical clips (both decode with libjpeg-turbo; with float resize output
    the largest difference seen is 1e-3 grey levels, at non-integer scale factors)."""
    need_dali()
    ds = MARS(mars_tree)
    kwargs = dict(ids_per_batch=3, tracklets_per_id=2) if mode == "train" else {}
    plan = ClipPlan(ds.train if mode == "train" else ds.gallery, 6, mode, seed=7, **kwargs)
    torch_batches = list(build_loader(plan, 6, *size, pipeline="torch", workers=2))
    dali_batches = list(build_loader(plan, 6, *size, pipeline="dali", workers=2))
    assert len(torch_batches) == len(dali_batches) > 0
    for a, b in zip(torch_batches, dali_batches):
        assert torch.equal(a["pids"], b["pids"]) and torch.equal(a["camids"], b["camids"])
        grey_levels = (a["clips"] - b["clips"]).abs().max().item() * 0.229 * 255
        assert grey_levels < 0.01


def test_plan_is_balanced_and_replayable(mars_tree):
    ds = MARS(mars_tree)
    plan = ClipPlan(ds.train, 6, "train", seed=5, ids_per_batch=3, tracklets_per_id=4)
    order = plan.order(0)
    assert len(order) == 6 * 4
    for b in range(0, len(order), 12):
        ids = [ds.train[i].pid for i in order[b:b + 12]]
        assert len(set(ids)) == 3 and all(ids.count(p) == 4 for p in set(ids))
    again = ClipPlan(ds.train, 6, "train", seed=5, ids_per_batch=3, tracklets_per_id=4)
    for pos in (0, 7, 23):
        t1, f1, flip1 = plan.sample(1, pos)
        t2, f2, flip2 = again.sample(1, pos)
        assert t1 == t2 and (f1 == f2).all() and flip1 == flip2
    assert not (plan.order(1) == plan.order(0)).all()


def test_all_frames_mode_yields_every_clip_of_a_tracklet(mars_tree):
    ds = MARS(mars_tree)
    t = max(ds.gallery, key=len)
    plan = ClipPlan([t], num_frames=4, mode="all")
    (batch,) = list(build_loader(plan, 1, 32, 16))
    assert batch["clips"].shape == (-(-len(t) // 4), 4, 3, 32, 16)
    assert (batch["pids"] == t.pid).all()


@pytest.mark.parametrize("pipeline", ["torch", "dali"])
def test_loader_resumes_at_a_batch_then_reads_the_next_epochs_whole(mars_tree, pipeline):
    if pipeline == "dali":
        need_dali()
    ds = MARS(mars_tree)
    plan = ClipPlan(ds.train, 3, "train", seed=3, ids_per_batch=2, tracklets_per_id=2)  # 6 ids: 3 batches

    def same(a, b):
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert torch.equal(x["pids"], y["pids"])
            torch.testing.assert_close(x["clips"], y["clips"], rtol=0, atol=1e-4)

    full = build_loader(plan, 4, 32, 16, pipeline=pipeline, workers=1, start_epoch=1)
    epoch1 = list(full)
    full.set_epoch(2)
    epoch2 = list(full)
    resumed = build_loader(plan, 4, 32, 16, pipeline=pipeline, workers=1, start_epoch=1, start=2)
    assert len(resumed) == 3  # every batch of the epoch, read or not
    same(list(resumed), epoch1[2:])
    resumed.set_epoch(2)
    same(list(resumed), epoch2)
    at_end = build_loader(plan, 4, 32, 16, pipeline=pipeline, workers=1, start_epoch=1, start=3)
    assert list(at_end) == []  # a run stopped at an epoch's last step: nothing left of it
    at_end.set_epoch(2)
    same(list(at_end), epoch2)
    with pytest.raises(ValueError, match="start batch 4 is outside the epoch's 3 batches"):
        build_loader(plan, 4, 32, 16, pipeline=pipeline, workers=1, start=4)
