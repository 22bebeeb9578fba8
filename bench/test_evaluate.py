"""Evaluation at MARS scale: 1,980 queries x 12,180 gallery tracklets with the real pids and cameras:
evaluate on a random distance matrix, and from 128-d features with id structure the dense path
(feature_distances, then evaluate) against evaluate_features (blocks, no matrix)."""
import os

import numpy as np
import pytest
import scipy.io
import torch

from stafast.metrics import evaluate, evaluate_features, feature_distances

INFO = os.path.join(os.environ.get("STAFAST_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                                     "data")), "mars", "info")


def mars_split(protocol: str):
    """(test table [start, end, pid, cam], query rows, gallery rows) of the real MARS test set."""
    if not os.path.isdir(INFO):
        pytest.skip(f"real MARS split metadata not found at {INFO}")
    test = scipy.io.loadmat(os.path.join(INFO, "tracks_test_info.mat"))["track_test_info"].astype(np.int64)
    query = scipy.io.loadmat(os.path.join(INFO, "query_IDX.mat"))["query_IDX"].ravel().astype(np.int64) - 1
    gallery = np.arange(len(test))
    if protocol == "toolbox":
        gallery = np.setdiff1d(gallery, query)
        gallery = gallery[test[gallery, 2] != -1]
    return test, query, gallery


@pytest.mark.parametrize("protocol", ["official", "toolbox"])
def test_evaluate_mars_scale(benchmark, protocol):
    test, query, gallery = mars_split(protocol)
    dist = np.random.default_rng().random((len(query), len(gallery)), dtype=np.float32)
    args = (dist, test[query, 2], test[gallery, 2], test[query, 3], test[gallery, 3], protocol)
    benchmark.group = f"evaluate MARS {protocol}: {len(query)} x {len(gallery)}"
    result = benchmark.pedantic(evaluate, args=args, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(op="evaluate", impl=protocol, num_valid_queries=result["num_valid_queries"])


@pytest.mark.parametrize("impl", ["dense", "features"])
def test_evaluate_features_mars_scale(benchmark, impl):
    """Official protocol from 128-d features (person centres + noise: figures near MARS's): the dense
    matrix then evaluate, or evaluate_features."""
    test, query, gallery = mars_split("official")
    pids, cams = test[:, 2], test[:, 3]
    rng = np.random.default_rng(0)
    gf = torch.from_numpy((rng.standard_normal((pids.max() + 2, 128))[pids + 1]
                           + 1.6 * rng.standard_normal((len(pids), 128))).astype(np.float32))
    qf = gf[query] + torch.from_numpy(rng.standard_normal((len(query), 128)).astype(np.float32))  # the same in both
    ids = (pids[query], pids, cams[query], cams)
    run = {"dense": lambda: evaluate(feature_distances(qf, gf), *ids),
           "features": lambda: evaluate_features(qf, gf, *ids)}[impl]
    benchmark.group = f"evaluate from features, MARS official: {len(query)} x {len(gallery)}"
    result = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(op="evaluate_features", impl=impl, mAP=result["mAP"],
                                num_valid_queries=result["num_valid_queries"])
