"""k-reciprocal re-ranking: stafast.metrics.rerank against the plain loops of tests/rerank_loop.py,
and --rerank in stafast.evaluate and stafast.train."""
import inspect
import json

import numpy as np
import pytest
import torch

from stafast import evaluate as E
from stafast import train as T
from stafast.metrics import rerank

from .rerank_loop import rerank_loop
from .test_train import TINY, tiny_root  # noqa: F401  (the tiny synthetic set, a module fixture)


def distances(rng, q, g, kind):
    """(q_g, q_q, g_g) blocks of one (q + g)^2 matrix: Euclidean of clustered points, integers with
    many ties, or unrelated non-symmetric random values."""
    n = q + g
    if kind == "euclidean":
        x = rng.normal(size=(n, 5)) + 3 * rng.normal(size=(7, 5))[rng.integers(0, 7, n)]
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)).astype(np.float32)
    elif kind == "integer":  # distances 0..6: ties everywhere, at every neighbourhood boundary
        d = rng.integers(0, 4, size=(n, n)).astype(np.float64)
        d = d + d.T
    else:
        d = rng.random((n, n)) + 0.01
    return d[:q, q:], d[:q, :q], d[q:, q:]


def test_defaults_are_the_authors():
    params = inspect.signature(rerank).parameters
    assert (params["k1"].default, params["k2"].default, params["lambda_value"].default) == (20, 6, 0.3)


@pytest.mark.parametrize("kind", ["euclidean", "integer", "random"])
@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 1, 0.5), (4, 3, 0.0), (7, 20, 1.0), (0, 2, 0.3)])
def test_matches_the_loop_definition(rng_seed, kind, k1, k2, lam):
    rng = np.random.default_rng(rng_seed)
    q, g = int(rng.integers(1, 16)), int(rng.integers(2, 60))
    blocks = distances(rng, q, g, kind)
    want = rerank_loop(*blocks, k1=k1, k2=k2, lambda_value=lam)
    # small chunks and pair budgets: many chunks in every stage
    got = rerank(*blocks, k1=k1, k2=k2, lambda_value=lam, chunk_elems=3 * (q + g), max_pairs=50)
    assert isinstance(got, np.ndarray) and got.shape == (q, g) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_chunking_does_not_change_the_result(rng_seed):
    rng = np.random.default_rng(rng_seed)
    blocks = distances(rng, 13, 71, "euclidean")
    one = rerank(*blocks)
    many = rerank(*blocks, chunk_elems=84, max_pairs=1)
    np.testing.assert_array_equal(one, many)


def test_torch_inputs_give_a_tensor_on_their_device(rng_seed):
    rng = np.random.default_rng(rng_seed)
    blocks = distances(rng, 6, 40, "integer")
    got = rerank(*(torch.from_numpy(b) for b in blocks))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.device == torch.device("cpu")
    np.testing.assert_allclose(got.numpy(), rerank_loop(*blocks), rtol=0, atol=1e-5)


def test_lambda_one_is_the_normalised_squared_distance():
    """Steps 1 and 7 by hand: with lambda = 1 only d remains: q_g^2 over each query column's maximum."""
    qg = np.array([[1.0, 2.0, 4.0]])
    qq = np.array([[0.0]])
    gg = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0]], dtype=np.float64)
    got = rerank(qg, qq, gg, k1=1, k2=1, lambda_value=1.0)
    np.testing.assert_allclose(got, [[1 / 16, 4 / 16, 16 / 16]], rtol=1e-6)


def test_reranking_helps_on_clustered_data(rng_seed):
    """A sanity check of the whole: 30 ids of 8 noisy gallery points around their centres, one query
    each; re-ranking raises mAP (by 0.03 to 0.11 over seeds 0-59, from about 0.9)."""
    from stafast.metrics import evaluate
    rng = np.random.default_rng(rng_seed)
    ids = 30
    centres = rng.normal(size=(ids, 16))
    g_pid = np.repeat(np.arange(ids), 8)
    q_pid = np.arange(ids)
    gf = centres[g_pid] + 0.6 * rng.normal(size=(len(g_pid), 16))
    qf = centres[q_pid] + 0.6 * rng.normal(size=(ids, 16))
    dist = lambda a, b: np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    plain = evaluate(dist(qf, gf), q_pid, g_pid, np.zeros(ids), np.ones(len(g_pid)), "toolbox")
    again = evaluate(rerank(dist(qf, gf), dist(qf, qf), dist(gf, gf)), q_pid, g_pid, np.zeros(ids),
                     np.ones(len(g_pid)), "toolbox")
    assert again["mAP"] > plain["mAP"]


def test_bad_inputs():
    qg, qq, gg = np.ones((2, 3)), np.ones((2, 2)), np.ones((3, 3))
    with pytest.raises(ValueError, match=r"g_g_dist must be \(3, 3\) for q_g_dist of shape \(2, 3\).*got \(2, 2\)"):
        rerank(qg, qq, qq)
    with pytest.raises(ValueError, match=r"q_g_dist must be a 2-D real matrix, got shape \(6,\)"):
        rerank(qg.ravel(), qq, gg)
    with pytest.raises(ValueError, match=r"distances of item 0 \(query 0\) include NaN or infinite values"):
        rerank(qg, np.full((2, 2), np.nan), gg)
    with pytest.raises(ValueError, match=r"distances of item 4 \(gallery 2\) include NaN or infinite values"):
        rerank(qg, qq, np.array([[0, 1, 2], [1, 0, 3], [2, 3, np.inf]]))
    with pytest.raises(ValueError, match="k2 must be an int >= 1, got 0"):
        rerank(qg, qq, gg, k2=0)
    with pytest.raises(ValueError, match=r"lambda_value must be in \[0, 1\], got 1.5"):
        rerank(qg, qq, gg, lambda_value=1.5)
    with pytest.raises(ValueError, match=r"item 3 \(gallery 2\) is at distance 0 from every item"):
        rerank(np.array([[1.0, 2.0, 0.0]]), np.zeros((1, 1)), np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0.0]]))
    with pytest.raises(ValueError, match="chunk_elems must be >= Q \\+ G = 5"):
        rerank(qg, qq, gg, chunk_elems=4)


# ------------------------------------------------------------------------------- the CLI flags
@pytest.mark.slow
def test_train_and_evaluate_report_reranked_figures(tiny_root, tmp_path):  # noqa: F811
    T.main(["--dataset", "synthetic", "--root", tiny_root, "--output", str(tmp_path), *TINY, "--epochs", "1",
            "--rerank"])
    latest = json.load(open(tmp_path / "metrics.json"))["latest"]
    for key in ("rank1", "mAP", "rerank_rank1", "rerank_rank5", "rerank_mAP"):
        assert 0 <= latest[key] <= 1, key
    summary = E.main(["--dataset", "synthetic", "--root", tiny_root, "--checkpoint", str(tmp_path / "checkpoint.pt"),
                      "--pipeline", "torch", "--workers", "0", "--rerank", "--output", str(tmp_path / "eval.json")])
    assert summary["rerank_mAP"] == pytest.approx(latest["rerank_mAP"], abs=1e-6)
    assert summary["mAP"] == pytest.approx(latest["mAP"], abs=1e-6)
    assert "rerank_mAP" in json.load(open(tmp_path / "eval.json"))
