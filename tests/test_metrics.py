import os

import numpy as np
import pytest
import scipy.io

from stafast.metrics import AP_RULES, PROTOCOLS, Protocol, chance_rank1, evaluate, get_protocol, ranks

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
