import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import torch

from stafast.metrics import (AP_RULES, PROTOCOLS, Protocol, chance_rank1, evaluate, evaluate_features, feature_distances,
                             get_protocol, ranks)

from .conftest import shared_data


def official_loop(dist, qp, gp, qc, gc):
    """The MARS package's compute_AP, transcribed loop by loop (independent of the vectorised code)."""
    aps, cmcs = [], []
    for i in range(len(qp)):
        index = np.argsort(dist[i], kind="stable")
        good = set(np.flatnonzero((gp == qp[i]) & (gc != qc[i])))
        junk = set(np.flatnonzero((gp == -1) | ((gp == qp[i]) & (gc == qc[i]))))
        cmc = np.zeros(len(gp))
        ap, old_recall, old_precision, intersect, j, good_now = 0.0, 0.0, 1.0, 0, 0, 0
        for n, g in enumerate(index, start=1):
            flag = False
            if g in good:
                cmc[n - j - 1:] = 1
                flag = True
                good_now += 1
            if g in junk:
                j += 1
                continue
            if flag:
                intersect += 1
            recall = intersect / max(len(good), 1)
            precision = intersect / (n - j)
            ap += (recall - old_recall) * (old_precision + precision) / 2
            old_recall, old_precision = recall, precision
            if good_now == len(good):
                break
        aps.append(ap if good else 0.0)
        cmcs.append(cmc if good else np.zeros(len(gp)))
    return np.mean(aps), np.mean(cmcs, axis=0)


def test_hand_worked_official():
    # gallery: 0 same id+cam (junk), 1 distractor (pid 0), 2 good, 3 junk pid -1, 4 good, 5 other id
    dist = np.array([[0.1, 0.2, 0.3, 0.05, 0.6, 0.5]])
    r = evaluate(dist, [7], [7, 0, 7, -1, 7, 3], [1], [1, 2, 3, 2, 2, 1], "official", max_rank=4)
    # kept ranking: distractor(1), good(2), other(3), good(4); trapezoid: hit at 2: (1/1 + 1/2)/2 ... :
    # ap = 0.5 * [(p_before=0/1 + 1/2)/2] + 0.5 * [(p_before=1/3 + 2/4)/2]
    want = 0.5 * (0 + 0.5) / 2 + 0.5 * (1 / 3 + 0.5) / 2
    assert r["mAP"] == pytest.approx(want)
    assert r["cmc"].tolist() == [0, 1, 1, 1] and r["num_valid_queries"] == 1


def test_hand_worked_toolbox_and_query_without_match():
    dist = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    gp, gc = [7, 5, 7, 5], [1, 1, 2, 2]
    # query 0 (pid 7, cam 1): item 0 removed; ranking 5,7,5 -> hit at rank 2: AP 1/2.
    # query 1 (pid 9): no match -> skipped in toolbox, AP 0 but counted in official.
    r = evaluate(dist, [7, 9], gp, [1, 1], gc, "toolbox", max_rank=3)
    assert r["num_valid_queries"] == 1 and r["mAP"] == pytest.approx(0.5) and r["cmc"].tolist() == [0, 1, 1]
    o = evaluate(dist, [7, 9], gp, [1, 1], gc, "official", max_rank=3)
    assert o["num_valid_queries"] == 2 and o["mAP"] == pytest.approx((1 / 2 * (0 + 1 / 2) / 2 * 2) / 2)
    assert o["cmc"].tolist() == [0, 0.5, 0.5]


def test_ties_rank_by_gallery_order():
    dist = np.array([[0.5, 0.5, 0.5]])
    hit_first = evaluate(dist, [1], [1, 2, 3], [1], [2, 2, 2], "toolbox")
    hit_last = evaluate(dist, [1], [3, 2, 1], [1], [2, 2, 2], "toolbox")
    assert hit_first["mAP"] == 1.0 and hit_last["mAP"] == pytest.approx(1 / 3)
    signed_zeros = evaluate(np.array([[0.0, -0.0]], np.float32), [1], [1, 2], [1], [2, 2], "toolbox")
    assert signed_zeros["mAP"] == 1.0  # -0.0 ties with 0.0 (its bits would rank it first)


@pytest.mark.parametrize("seed", range(3))
def test_matches_the_official_loop_on_random_data(seed):
    rng = np.random.default_rng(seed)
    nq, ng = 17, 60
    qp, gp = rng.integers(1, 6, nq), rng.integers(-1, 6, ng)  # queries are real ids; the gallery has junk, distractors
    qc, gc = rng.integers(1, 4, nq), rng.integers(1, 4, ng)
    dist = rng.random((nq, ng)).round(1)  # rounding makes ties
    want_map, want_cmc = official_loop(dist, qp, gp, qc, gc)
    got = evaluate(dist, qp, gp, qc, gc, "official", max_rank=ng, chunk=5)
    assert got["mAP"] == pytest.approx(want_map)
    np.testing.assert_allclose(got["cmc"], want_cmc)
    assert ranks(got)["rank1"] == pytest.approx(want_cmc[0])


def test_real_mars_structure_query_counts():
    mars_info = shared_data("mars", "info")
    test = scipy.io.loadmat(os.path.join(mars_info, "tracks_test_info.mat"))["track_test_info"].astype(int)
    query = scipy.io.loadmat(os.path.join(mars_info, "query_IDX.mat"))["query_IDX"].ravel().astype(int) - 1
    pids, cams = test[:, 2], test[:, 3]
    rng = np.random.default_rng(0)
    official = evaluate(rng.random((len(query), len(test)), dtype=np.float32), pids[query], pids, cams[query], cams)
    assert official["num_valid_queries"] == 1980
    keep = np.setdiff1d(np.arange(len(test)), query)
    keep = keep[pids[keep] != -1]
    assert len(keep) == 9330
    toolbox = evaluate(rng.random((len(query), len(keep)), dtype=np.float32), pids[query], pids[keep],
                       cams[query], cams[keep], "toolbox")
    assert toolbox["num_valid_queries"] == 1980 - 140
    assert 0 < toolbox["mAP"] < 0.05  # random distances: near chance


def test_bad_inputs():
    with pytest.raises(ValueError, match="protocol must be one of"):
        evaluate(np.zeros((1, 1)), [1], [1], [1], [2], "market")
    with pytest.raises(ValueError, match=r"distmat must be \(num_query, num_gallery\) = \(2, 3\)"):
        evaluate(np.zeros((1, 3)), [1, 2], [1, 2, 3], [1, 1], [2, 2, 2])


def test_registry_entries_are_complete():
    assert {"official", "toolbox"} <= set(PROTOCOLS)
    for name, p in PROTOCOLS.items():
        assert p.name == name and p.source and p.ap in AP_RULES and callable(p.masks), name
    assert get_protocol(PROTOCOLS["toolbox"]) is PROTOCOLS["toolbox"]


def _other_clothes(q, g):
    """A protocol reading an extra attribute: same-clothes matches of the query's pid are removed."""
    same_id = q["pids"] == g["pids"]
    keep = ~(same_id & ((q["camids"] == g["camids"]) | (q["clothes"] == g["clothes"])))
    return keep, same_id & keep


OTHER_CLOTHES = Protocol("other-clothes", "a test", _other_clothes, skip_unmatched=True, ap="non-interpolated",
                         attrs=("clothes",))


def test_a_protocol_with_an_extra_attribute():
    # gallery: 0 same pid other cam same clothes (removed), 1 other pid, 2 same pid other cam other clothes
    dist = np.array([[0.1, 0.2, 0.3]])
    args = (dist, [4], [4, 5, 4], [1], [2, 2, 2], OTHER_CLOTHES)
    r = evaluate(*args, q_attrs={"clothes": [7]}, g_attrs={"clothes": [7, 7, 8]})
    assert r["mAP"] == pytest.approx(1 / 2) and r["cmc"].tolist() == [0, 1, 1] and r["protocol"] == "other-clothes"
    assert chance_rank1([4], [4, 5, 4], [1], [2, 2, 2], OTHER_CLOTHES, q_attrs={"clothes": [7]},
                        g_attrs={"clothes": [7, 7, 8]}) == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match=r"protocol 'other-clothes' needs g_attrs with \['clothes'\]"):
        evaluate(*args, q_attrs={"clothes": [7]})
    with pytest.raises(ValueError, match="g ids must all have one length"):
        evaluate(*args, q_attrs={"clothes": [7]}, g_attrs={"clothes": [7, 7]})


def test_masks_that_break_the_protocol_rules_are_refused():
    every_item_good = Protocol("bad", "a test", lambda q, g: (q["pids"] == q["pids"], g["pids"] >= 0), False,
                               "trapezoid")
    with pytest.raises(ValueError, match="a good match must be kept and be the query's pid"):
        evaluate(np.zeros((1, 2)), [1], [1, 2], [1], [2, 2], every_item_good)


# ------------------------------------------------------------------------------- evaluate_features
ALL_PROTOCOLS = [*PROTOCOLS.values(), OTHER_CLOTHES]


def features(rng, n: int, dim: int, quantised: bool) -> np.ndarray:
    """Gaussian features, or entries in {-1, 0, 1}: many equal distances (ties), zero vectors included."""
    return (rng.integers(-1, 2, (n, dim)) if quantised else rng.standard_normal((n, dim))).astype(np.float32)


def assert_same_result(got: dict, want: dict):
    assert got["num_valid_queries"] == want["num_valid_queries"] and got["protocol"] == want["protocol"]
    assert abs(got["mAP"] - want["mAP"]) <= 1e-9, (got["mAP"], want["mAP"])
    np.testing.assert_allclose(got["cmc"], want["cmc"], rtol=0, atol=1e-9)


def both(qf, gf, qp, gp, qc, gc, protocol, attrs=None, **blocks):
    """(evaluate_features, evaluate on the dense matrix) under `protocol`; attrs: (q_attrs, g_attrs)."""
    kw = dict(zip(("q_attrs", "g_attrs"), attrs or (None, None)))
    return (evaluate_features(qf, gf, qp, gp, qc, gc, protocol, **kw, **blocks),
            evaluate(feature_distances(qf, gf), qp, gp, qc, gc, protocol, **kw))


@pytest.mark.parametrize("quantised", [False, True], ids=["gaussian", "ties"])
@pytest.mark.parametrize("protocol", ALL_PROTOCOLS, ids=lambda p: p.name)
def test_features_equal_the_dense_evaluation_on_random_data(protocol, quantised, rng_seed):
    rng = np.random.default_rng(rng_seed)
    for _ in range(6):
        nq, ng, dim = rng.integers(1, 30), rng.integers(1, 200), int(rng.integers(2, 7))
        qp, gp = rng.integers(1, 6, nq), rng.integers(-1, 6, ng)
        qc, gc = rng.integers(1, 4, nq), rng.integers(1, 4, ng)
        attrs = tuple({a: rng.integers(0, 2, n) for a in ("clothes", "location", "scale")} for n in (nq, ng))
        qf, gf = features(rng, nq, dim, quantised), features(rng, ng, dim, quantised)
        gf[: ng // 4] = qf[rng.integers(0, nq, ng // 4)]  # some gallery items are queries: distance 0, or -tiny
        blocks = dict(query_block=int(rng.integers(1, 9)), gallery_block=int(rng.integers(1, 60)))
        try:
            got, want = both(qf, gf, qp, gp, qc, gc, protocol, attrs, **blocks)
        except ValueError as e:  # no query has a match: both must say so
            assert "no query has a match" in str(e)
            with pytest.raises(ValueError, match="no query has a match"):
                evaluate_features(qf, gf, qp, gp, qc, gc, protocol, q_attrs=attrs[0], g_attrs=attrs[1], **blocks)
            continue
        assert_same_result(got, want)


def mars_ids():
    info = shared_data("mars", "info")
    test = scipy.io.loadmat(os.path.join(info, "tracks_test_info.mat"))["track_test_info"].astype(int)
    query = scipy.io.loadmat(os.path.join(info, "query_IDX.mat"))["query_IDX"].ravel().astype(int) - 1
    return test[:, 2], test[:, 3], query


@pytest.mark.parametrize("quantised", [False, True], ids=["id-structure", "ties"])
def test_features_equal_the_dense_evaluation_at_mars_shape(quantised, rng_seed):
    """The real MARS test pids and cameras (1,980 x 12,180 official, 1,980 x 9,330 toolbox), 128-d
    features with id structure: near MARS-level figures, so many items rank between good matches."""
    pids, cams, query = mars_ids()
    rng = np.random.default_rng(rng_seed)
    centres = rng.standard_normal((pids.max() + 2, 128))
    gf = (centres[pids + 1] + 1.6 * rng.standard_normal((len(pids), 128))).astype(np.float32)
    gf[pids <= 0] = rng.standard_normal((int((pids <= 0).sum()), 128))  # junk and distractors: anyone
    qf = gf[query] + rng.standard_normal((len(query), 128)).astype(np.float32)
    if quantised:
        gf, qf = np.sign(np.round(gf / 2)), np.sign(np.round(qf / 2))
    toolbox = np.setdiff1d(np.arange(len(pids)), query)
    galleries = {"official": np.arange(len(pids)), "toolbox": toolbox[pids[toolbox] != -1]}
    for name in ["official"] if quantised else galleries:  # ties under every protocol: the random test
        gallery = galleries[name]
        got, want = both(torch.from_numpy(qf), torch.from_numpy(gf[gallery]), pids[query], pids[gallery],
                         cams[query], cams[gallery], name)
        assert_same_result(got, want)
        assert 0.1 < want["mAP"] < 0.9, want["mAP"]  # neither trivial nor hopeless


def test_feature_distances_do_not_depend_on_the_blocks(rng_seed):
    rng = np.random.default_rng(rng_seed)
    qf, gf = torch.from_numpy(features(rng, 70, 128, False)), torch.from_numpy(features(rng, 3001, 128, False))
    whole = feature_distances(qf, gf)
    parts = torch.cat([torch.cat([feature_distances(qf[i:i + 7], gf[j:j + 500]) for j in range(0, 3001, 500)], 1)
                       for i in range(0, 70, 7)])
    assert torch.equal(whole, parts)


def test_evaluate_features_bad_inputs():
    f = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"qf must be a floating \(num_items, dim\) array, got \(2,\)"):
        evaluate_features(np.zeros(2, np.float32), f, [1, 2], [1, 2], [1, 1], [2, 2])
    with pytest.raises(ValueError, match="one feature size"):
        evaluate_features(f, np.zeros((2, 3), np.float32), [1, 2], [1, 2], [1, 1], [2, 2])
    with pytest.raises(ValueError, match="ids must have one entry per feature: qf 2 rows, q ids 3"):
        evaluate_features(f, f, [1, 2, 3], [1, 2], [1, 1, 1], [2, 2])
    with pytest.raises(ValueError, match="must be finite"):
        evaluate_features(f, np.full((2, 4), np.nan, np.float32), [1, 2], [1, 2], [1, 1], [2, 2])
    with pytest.raises(ValueError, match="protocol must be one of"):
        evaluate_features(f, f, [1, 2], [1, 2], [1, 1], [2, 2], "market")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_evaluate_features_on_a_gpu(rng_seed):
    pids, cams, query = mars_ids()
    rng = np.random.default_rng(rng_seed)
    gf = torch.from_numpy(rng.standard_normal((len(pids), 128)).astype(np.float32))
    gf += torch.from_numpy(rng.standard_normal((pids.max() + 2, 128)).astype(np.float32))[pids + 1]
    qf = gf[query] + torch.randn(len(query), 128)
    want = evaluate_features(qf, gf, pids[query], pids, cams[query], cams)
    assert_same_result(evaluate_features(qf.cuda(), gf.cuda(), pids[query], pids, cams[query], cams), want)


MEMORY_PROBE = """
import numpy as np, torch
from stafast.metrics import evaluate_features
def peak_mb(run):  # peak resident memory during run(), beyond what was resident before (Linux)
    open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to the current RSS
    rss = lambda key: int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) / 1024
    before = rss("VmRSS:")
    run()
    return rss("VmHWM:") - before
nq, ng, dim = 1000, 200_000, 16  # 5 tracklets per id, 6 cameras
g = torch.Generator().manual_seed(0)
gp, gc = torch.arange(ng) // 5, torch.arange(ng) % 6
gf = torch.randn(ng // 5, dim, generator=g)[gp] + 0.25 * torch.randn(ng, dim, generator=g)
qi = torch.randperm(ng, generator=g)[:nq]
qf, qp, qc = gf[qi] + 0.25 * torch.randn(nq, dim, generator=g), gp[qi], (gc[qi] + 1) % 6
print(peak_mb(lambda: torch.empty(100_000_000, dtype=torch.int32).fill_(1)),
      peak_mb(lambda: print(evaluate_features(qf, gf, qp, gp, qc, gc)["mAP"])))
"""


def test_evaluate_features_memory_stays_below_the_dense_matrix():
    """1,000 queries x 200,000 gallery: the dense float32 matrix alone is 0.8 GB (evaluate's sort
    needs more); evaluate_features must stay under 150 MB beyond its inputs.  The probe first
    measures a 400 MB allocation, so that it is seen to measure."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    mAP, calibration, used = map(float, out.stdout.split())
    print(f"peak memory beyond the inputs: 400 MB probe {calibration:.0f} MB, evaluate_features {used:.0f} MB "
          f"(mAP {mAP:.3f})")
    assert calibration > 350 and 0.2 < mAP < 0.99
    assert used < 150
