"""The MARS gallery+query protocol and the clothes / location / scale protocols of CCVID and MEVID:
hand-worked distance matrices, an independent transcription of their public evaluation code on
random distances, and the number of queries each MARS protocol counts on the real metadata."""
import os

import numpy as np
import pytest
import scipy.io

from stafast.data import DATASETS, DatasetError, load_dataset, protocol_attrs, synth
from stafast.metrics import PROTOCOLS, evaluate

from .conftest import shared_data

SPLITS = {"same-clothes": ("clothes", True), "clothes-changing": ("clothes", False),
          "same-location": ("location", True), "changed-location": ("location", False),
          "same-scale": ("scale", True), "changed-scale": ("scale", False)}


def reference(dist, qp, gp, qc, gc, qa=None, ga=None, same=None):
    """Simple-CCReID's / MEVID's evaluate (same=None) and evaluate_with_clothes / _locations /
    _scales (same=True: SC, SL, SS; False: CC, DL, DS), loop by loop with numpy's set functions,
    ranking ties by gallery order."""
    cmc, aps = np.zeros(dist.shape[1]), []
    for i in range(len(qp)):
        index = np.argsort(dist[i], kind="stable")
        query_index, camera_index = np.flatnonzero(gp == qp[i]), np.flatnonzero(gc == qc[i])
        good = np.setdiff1d(query_index, camera_index)
        junk = np.intersect1d(query_index, camera_index)
        if same is not None:
            attr_index = np.flatnonzero(ga == qa[i])
            if same:
                good = np.intersect1d(good, attr_index)
                junk = np.union1d(junk, np.setdiff1d(query_index, attr_index))
            else:
                good = np.setdiff1d(good, attr_index)
                junk = np.union1d(junk, np.intersect1d(query_index, attr_index))
        if good.size == 0:
            continue
        index = index[np.isin(index, junk, invert=True)]
        rows_good = np.flatnonzero(np.isin(index, good))
        c = np.zeros(dist.shape[1])
        c[rows_good[0]:] = 1
        cmc += c
        aps.append(sum((k + 1) / (r + 1) for k, r in enumerate(rows_good)) / len(good))
    return np.mean(aps), cmc / len(aps), len(aps)


# ----------------------------------------------------------------------------- by hand
# one query (pid 1, camera 1, value 0) against: 0 itself-like (1, 1, 0), 1 another person, 2 the
# person in camera 2 with value 1, 3 the person in camera 3 with value 0, 4 another person,
# 5 the person in camera 1 with value 1; distances rank them 0, 1, ..., 5.  A second query
# (pid 3, camera 2, value 3) has one match, item 4 (camera 1, its value), at rank 5 of 6.
HAND = dict(distmat=np.array([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]]),
            q_pids=[1, 3], g_pids=[1, 2, 1, 1, 3, 1], q_camids=[1, 2], g_camids=[1, 2, 2, 3, 1, 1])
Q_VALUES, G_VALUES = [0, 3], [0, 2, 1, 0, 3, 1]


def test_general_by_hand():
    # query 1: items 0 and 5 (its person, its camera) removed -> 1 2 3 4: matches at ranks 2, 3
    # query 2: nothing removed; the match at rank 5
    r = evaluate(**HAND, protocol="general", max_rank=6)
    assert r["mAP"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 / 5) / 2)
    assert r["cmc"].tolist() == [0, 0.5, 0.5, 0.5, 1, 1] and r["num_valid_queries"] == 2


@pytest.mark.parametrize("same_name, changed_name", [("same-clothes", "clothes-changing"),
                                                    ("same-location", "changed-location"),
                                                    ("same-scale", "changed-scale")])
def test_attribute_splits_by_hand(same_name, changed_name):
    attr = SPLITS[same_name][0]
    kw = dict(q_attrs={attr: Q_VALUES}, g_attrs={attr: G_VALUES}, max_rank=6)
    # same: query 1 drops 0, 5 (camera) and 2 (other value) -> 1 3 4: match at rank 2; query 2 as in general
    same = evaluate(**HAND, protocol=same_name, **kw)
    assert same["mAP"] == pytest.approx((1 / 2 + 1 / 5) / 2) and same["num_valid_queries"] == 2
    assert same["cmc"].tolist() == [0, 0.5, 0.5, 0.5, 1, 1]
    # changed: query 1 drops 0, 5 (camera) and 3 (same value) -> 1 2 4: match at rank 2; query 2 has
    # no match in another value: skipped
    changed = evaluate(**HAND, protocol=changed_name, **kw)
    assert changed["mAP"] == pytest.approx(1 / 2) and changed["num_valid_queries"] == 1
    assert changed["cmc"].tolist() == [0, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match=rf"protocol '{same_name}' needs q_attrs with \['{attr}'\]"):
        evaluate(**HAND, protocol=same_name)


def test_gallery_plus_query_by_hand():
    # queries: q0 (pid 5, camera 1), q1 (pid 5, camera 2); toolbox gallery: g0 (5, camera 1), g1 (9, camera 2)
    toolbox = dict(q_pids=[5, 5], g_pids=[5, 9], q_camids=[1, 2], g_camids=[1, 2])
    d = np.array([[0.0, 0.3, 0.1, 0.2],   # q0 to q0 q1 g0 g1
                  [0.4, 0.0, 0.5, 0.1]])  # q1
    alone = evaluate(d[:, 2:], **toolbox, protocol="toolbox", max_rank=2)
    assert alone["num_valid_queries"] == 1 and alone["mAP"] == pytest.approx(1 / 2)  # q0 has no match: skipped
    # gallery q0 q1 g0 g1: q0 drops q0, g0 -> g1 q1, match at rank 2; q1 drops q1 -> g1 q0 g0, matches at 2 and 3
    both = evaluate(d, [5, 5], [5, 5, 5, 9], [1, 2], [1, 2, 1, 2], protocol="gallery+query", max_rank=3)
    assert both["num_valid_queries"] == 2 and both["mAP"] == pytest.approx((1 / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    assert both["cmc"].tolist() == [0, 1, 1]


# -------------------------------------------------------------- against the public code's rules
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", ["general", *SPLITS])
def test_equals_the_public_evaluation_code(seed, name):
    rng = np.random.default_rng(seed)
    nq, ng = 13, 70
    qp, gp = rng.integers(1, 6, nq), rng.integers(1, 8, ng)
    qc, gc = rng.integers(1, 4, nq), rng.integers(1, 4, ng)
    qa, ga = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    dist = rng.random((nq, ng)).round(1)  # ties, ranked by gallery order
    attr, same = SPLITS.get(name, (None, None))
    kw = {} if attr is None else {"q_attrs": {attr: qa}, "g_attrs": {attr: ga}}
    got = evaluate(dist, qp, gp, qc, gc, name, max_rank=ng, chunk=4, **kw)
    want_map, want_cmc, valid = reference(dist, qp, gp, qc, gc, qa, ga, same)
    assert got["num_valid_queries"] == valid and got["mAP"] == pytest.approx(want_map)
    np.testing.assert_allclose(got["cmc"], want_cmc)


@pytest.mark.parametrize("seed", range(3))
def test_gallery_plus_query_equals_sinet_on_the_concatenated_gallery(seed, tmp_path):
    """SINet's test(): gf = cat(qf, gf), then its evaluate (the toolbox loop), against MARS(...,
    "gallery+query") evaluated by stafast on random features."""
    root = synth.make_mars(str(tmp_path), ids=2, test_ids=6, cameras=3, frames=(1, 2), size=(16, 8), seed=seed)
    ds = load_dataset("synthetic", root, protocol="gallery+query")
    toolbox = load_dataset("synthetic", root, protocol="toolbox")
    rng = np.random.default_rng(seed)
    qf = rng.normal(size=(len(ds.query), 8))
    gf = np.concatenate([qf, rng.normal(size=(len(toolbox.gallery), 8))])  # the queries in front, as SINet
    dist = ((qf[:, None] - gf[None]) ** 2).sum(-1)
    ids = lambda ts: (np.array([t.pid for t in ts]), np.array([t.camid for t in ts]))  # noqa: E731
    (qp, qc), (gp, gc) = ids(ds.query), ids(ds.gallery)
    got = evaluate(dist, qp, gp, qc, gc, "gallery+query", max_rank=len(gp))
    want_map, want_cmc, valid = reference(dist, qp, gp, qc, gc)
    assert valid == got["num_valid_queries"] == len(qp) and got["mAP"] == pytest.approx(want_map)
    np.testing.assert_allclose(got["cmc"], want_cmc)


# ------------------------------------------------------------------ the real MARS metadata
def test_the_three_mars_protocols_count_different_queries():
    """On the real MARS tables: official counts all 1,980 queries (against 12,180, junk removed,
    queries with no match scoring 0), toolbox 1,840 (against 9,330: 140 have no cross-camera
    match left), gallery+query all 1,980 again (against 11,310: each query's other-camera queries
    are matches).  Numbers under different protocols are not comparable."""
    info = shared_data("mars", "info")
    test = scipy.io.loadmat(os.path.join(info, "tracks_test_info.mat"))["track_test_info"].astype(int)
    query = scipy.io.loadmat(os.path.join(info, "query_IDX.mat"))["query_IDX"].ravel().astype(int) - 1
    pids, cams = test[:, 2], test[:, 3]
    rest = np.setdiff1d(np.arange(len(test)), query)
    toolbox = rest[pids[rest] != -1]
    galleries = {"official": np.arange(len(test)), "toolbox": toolbox, "gallery+query": np.concatenate([query, toolbox])}
    pairs = {name: set(zip(pids[g], cams[g])) for name, g in galleries.items()}
    cameras = range(1, 7)
    matched = {name: sum(any((p, c) in pairs[name] for c in cameras if c != cam) for p, cam in zip(pids[query], cams[query]))
               for name in galleries}  # queries with their person in another camera of the gallery
    assert {n: len(g) for n, g in galleries.items()} == {"official": 12180, "toolbox": 9330, "gallery+query": 11310}
    assert matched == {"official": 1980, "toolbox": 1980 - 140, "gallery+query": 1980}
    # official counts every query (matched or not), the others the matched ones; evaluate agrees
    g = galleries["gallery+query"]
    r = evaluate(np.random.default_rng(0).random((len(query), len(g)), dtype=np.float32), pids[query], pids[g],
                 cams[query], cams[g], "gallery+query")
    assert r["num_valid_queries"] == 1980 and r["protocol"] == "gallery+query"


# --------------------------------------------------------------------- datasets and protocols
def test_every_dataset_protocol_is_defined_and_defaults_are_its_own():
    for name, e in DATASETS.items():
        assert set(e.protocols) <= set(PROTOCOLS), name
        assert e.default_protocol in e.protocols, name


def test_protocols_read_the_attributes_the_datasets_give(tmp_path):
    root = synth.make_mevid(str(tmp_path / "mevid"), ids=2, test_ids=3, frames=(1, 2), size=(16, 8), seed=2)
    for protocol in DATASETS["mevid"].protocols:
        ds = load_dataset("mevid", root, protocol=protocol)
        attrs = protocol_attrs(ds, protocol)
        assert set(attrs["q_attrs"]) == set(PROTOCOLS[protocol].attrs)
        assert [len(v) for v in attrs["g_attrs"].values()] == [len(ds.gallery)] * len(PROTOCOLS[protocol].attrs)
    os.remove(os.path.join(root, "test_track_scale.txt"))
    assert load_dataset("mevid", root, protocol="same-location").query
    with pytest.raises(DatasetError, match=r"protocol same-scale compares the scale .*copy test_track_scale.txt of "
                                           r"the MEVID code \(github.com/Kitware/MEVID\)"):
        load_dataset("mevid", root, protocol="same-scale")


def test_the_training_configuration_defaults_to_the_dataset_protocol():
    from stafast.config import TrainConfig
    assert {d: TrainConfig.create(d).protocol for d in ("synthetic", "mars", "dukev", "ccvid", "mevid", "lsvid")} == {
        "synthetic": "official", "mars": "gallery+query", "dukev": "toolbox", "ccvid": "general", "mevid": "general",
        "lsvid": "toolbox"}
    assert TrainConfig.create("ccvid", protocol="clothes-changing").protocol == "clothes-changing"
    with pytest.raises(ValueError, match=r"protocol='gallery\+query' is not one of dataset ccvid's protocols"):
        TrainConfig.create("ccvid", protocol="gallery+query")
