"""The synthetic MARS-layout set's difficulty parameters and its cache."""
import os

import numpy as np
import pytest

from stafast.data import MARS, synth
from stafast.data.synth import Difficulty, cache_name, cached_mars, draw_scene, person_style, render

TINY = dict(ids=3, test_ids=3, cameras=2, tracklets=1, frames=(2, 3), size=(16, 8), distractors=1, junk=0,
            occlusion=0.0, difficulty=Difficulty(part_occlusion=0.5, clutter=1), queries=None)


def frames_of(difficulty, cam=1, n=4, seed=0):
    rng = np.random.default_rng(seed)
    scene = draw_scene(difficulty, rng) if difficulty is not None else None
    return np.stack([render(person_style(5), 64, 32, cam, t, rng, 0.0, scene) for t in range(n)])


def test_each_difficulty_parameter_changes_the_frames_and_none_of_them_is_the_old_set():
    old = frames_of(None)
    np.testing.assert_array_equal(frames_of(Difficulty()), old)  # all off: the frames of the set before them
    for knob in (dict(part_occlusion=1.0), dict(misalignment=0.2), dict(clutter=4), dict(light=0.3)):
        changed = frames_of(Difficulty(**knob))
        assert np.abs(changed.astype(int) - old).mean() > 2, knob
    # light is a property of the camera: the same cast in every frame of that camera, another in another
    lit = Difficulty(light=0.3)
    assert not np.array_equal(frames_of(lit, cam=1) / np.maximum(frames_of(None, cam=1), 1),
                              frames_of(lit, cam=2) / np.maximum(frames_of(None, cam=2), 1))
    with pytest.raises(ValueError, match="Difficulty: part_occlusion in"):
        Difficulty(part_occlusion=1.5)


def test_part_occlusion_covers_a_different_part_in_different_frames():
    """Rows where the figure stands (10-90% of the height) that are one flat colour across its
    middle are covered; their centre (head, torso or legs) changes from frame to frame."""
    frames = frames_of(Difficulty(part_occlusion=1.0), n=16).astype(float)
    middle = frames[:, 6:58, 4:28]  # rows 6..57 of 64, columns 4..27 of 32 (wider than the torso)
    flat = middle.std(axis=2).max(axis=-1) < 10  # (frames, rows): only the noise varies along the row
    assert flat.any(1).all()  # every frame has a covered band
    centres = [np.flatnonzero(rows).mean() / len(rows) for rows in flat]
    assert max(centres) - min(centres) > 0.3
    plain = frames_of(None, n=16).astype(float)[:, 6:58, 4:28].std(axis=2).max(axis=-1) < 10
    assert plain.mean() < flat.mean() / 3


def test_cache_name_follows_every_parameter_and_the_generator_version(monkeypatch):
    base = cache_name(TINY, 0)
    assert base == cache_name(dict(TINY), 0) and base.startswith(f"synthetic-mars-g{synth.GENERATOR_VERSION}-")
    variants = [dict(TINY, test_ids=4), dict(TINY, queries=2), dict(TINY, difficulty=Difficulty(clutter=2)),
                dict(TINY, frames=(2, 4))]
    names = {cache_name(v, 0) for v in variants} | {cache_name(TINY, 1), base}
    assert len(names) == len(variants) + 2
    monkeypatch.setattr(synth, "GENERATOR_VERSION", synth.GENERATOR_VERSION + 1)
    assert cache_name(TINY, 0) != base


def test_a_stale_cache_is_never_read(tmp_path, monkeypatch):
    monkeypatch.setenv("STAFAST_CACHE", str(tmp_path))
    stale = tmp_path / "synthetic-mars-s0"  # the name every set had before the parameters were in it
    synth.make_mars(str(stale), ids=2, test_ids=2, cameras=2, tracklets=1, frames=(2, 2), size=(16, 8))
    root = cached_mars(params=TINY)
    assert os.path.basename(root) == cache_name(TINY, 0) and MARS(root).num_train_pids == 3
    assert cached_mars(params=TINY) == root  # generated once, then read


def test_the_number_of_queries_is_a_parameter(tmp_path):
    root = synth.make_mars(str(tmp_path), **dict(TINY, test_ids=4, queries=3))
    assert len(MARS(root).query) == 3
