import numpy as np
import pytest

from stafast.data import RestrictedRandomSampler, chunk_bounds, sample_frames


@pytest.mark.parametrize("t, n, bounds", [
    (12, 6, [[0, 2], [2, 4], [4, 6], [6, 8], [8, 10], [10, 12]]),
    (13, 6, [[0, 2], [2, 4], [4, 6], [6, 8], [8, 10], [10, 13]]),
    (7, 3, [[0, 2], [2, 4], [4, 7]]),
    (4, 6, [[0, 1], [0, 1], [1, 2], [2, 3], [2, 3], [3, 4]]),
    (1, 6, [[0, 1]] * 6),
])
def test_chunk_boundaries(t, n, bounds):
    assert chunk_bounds(t, n).tolist() == bounds


def test_train_draws_one_frame_inside_each_chunk(rng_seed):
    rng = np.random.default_rng(rng_seed)
    for t in (1, 5, 6, 7, 50, 675):
        bounds = chunk_bounds(t, 6)
        seen = set()
        for _ in range(50):
            idx = sample_frames(t, 6, "train", rng)
            assert idx.shape == (6,)
            assert ((bounds[:, 0] <= idx) & (idx < bounds[:, 1])).all()
            assert (np.diff(idx) >= 0).all()
            seen.add(tuple(idx))
        if t >= 12:
            assert len(seen) > 1  # it is random


def test_test_mode_takes_first_frames():
    assert sample_frames(13, 6, "test").tolist() == [0, 2, 4, 6, 8, 10]
    assert sample_frames(1, 6, "test").tolist() == [0] * 6


def test_all_frames_mode():
    clips = sample_frames(14, 6, "all")
    assert clips.shape == (3, 6)
    assert clips.ravel().tolist() == list(range(14)) + [13] * 4
    assert sample_frames(2, 6, "all").tolist() == [[0, 1, 1, 1, 1, 1]]


def test_sampler_state_replays():
    s = RestrictedRandomSampler(6, "train", seed=3)
    state = s.state_dict()
    first = [s(100).tolist() for _ in range(3)]
    s.load_state_dict(state)
    assert [s(100).tolist() for _ in range(3)] == first


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 1 frame, got 0"):
        sample_frames(0, 6)
    with pytest.raises(ValueError, match=r"mode must be one of \('train', 'test', 'all'\), got 'dense'"):
        sample_frames(5, 6, "dense")
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        RestrictedRandomSampler(0)
