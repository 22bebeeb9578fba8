"""Evaluation at MARS scale: 1,980 queries x 12,180 gallery tracklets with the real pids and cameras."""
import os

import numpy as np
import pytest
import scipy.io

from stafast.metrics import evaluate

INFO = os.path.join(os.environ.get("STAFAST_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                                     "data")), "mars", "info")


@pytest.mark.parametrize("protocol", ["official", "toolbox"])
def test_evaluate_mars_scale(benchmark, protocol):
    if not os.path.isdir(INFO):
        pytest.skip(f"real MARS split metadata not found at {INFO}")
    test = scipy.io.loadmat(os.path.join(INFO, "tracks_test_info.mat"))["track_test_info"].astype(np.int64)
    query = scipy.io.loadmat(os.path.join(INFO, "query_IDX.mat"))["query_IDX"].ravel().astype(np.int64) - 1
    gallery = np.arange(len(test))
    if protocol == "toolbox":
        gallery = np.setdiff1d(gallery, query)
        gallery = gallery[test[gallery, 2] != -1]
    dist = np.random.default_rng().random((len(query), len(gallery)), dtype=np.float32)
    args = (dist, test[query, 2], test[gallery, 2], test[query, 3], test[gallery, 3], protocol)
    benchmark.group = f"evaluate MARS {protocol}: {len(query)} x {len(gallery)}"
    result = benchmark.pedantic(evaluate, args=args, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(op="evaluate", impl=protocol, num_valid_queries=result["num_valid_queries"])
