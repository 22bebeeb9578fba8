"""stafast.search: the FAISS gallery index (exact flat search, recall of the approximate kinds,
same-camera exclusion, save/load, the command line).  The 200,000-feature check: bench/large_gallery.py search."""
import json
import sys

import numpy as np
import pytest
import torch

from stafast import search
from stafast.features import synthetic_features
from stafast.metrics import feature_distances

from .test_evaluate import assert_one_line_error

faiss = pytest.importorskip("faiss")
GalleryIndex = search.GalleryIndex


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """FAISS's OpenMP threads spin while they wait: on 2 shared cores one thread is many times faster."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    f = synthetic_features(300, 8000, seed=1)
    return f.part(0, "query"), f.part(0, "gallery")


def exact_topk(q, g, k):
    d = feature_distances(q, g).double()
    return torch.sort(d, dim=1, stable=True).indices[:, :k].numpy(), torch.sort(d, dim=1).values[:, :k].numpy()


def test_flat_is_the_exact_search(data):
    q, g = data
    index = GalleryIndex.build(g.features, g.pids, g.camids, g.paths)
    dist, rows = index.search(q.features, 10)
    want_rows, want_dist = exact_topk(q.features, g.features, 10)
    np.testing.assert_allclose(dist, want_dist, atol=2e-6)  # the same neighbours, up to float32 ties:
    ties = np.abs(np.diff(want_dist, axis=1)) < 2e-6
    assert (rows == want_rows)[:, :-1][~ties].all() and index.recall is None


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_approximate_kinds_reach_their_recall_with_the_defaults(data, kind):
    q, g = data
    index = GalleryIndex.build(g.features, g.pids, g.camids, g.paths, kind=kind)
    rows = index.search(q.features, 10)[1]
    want = exact_topk(q.features, g.features, 10)[0]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, want)])
    print(f"{kind}: recall@10 {recall:.3f} on held-out queries, {index.recall:.3f} measured by build")
    assert recall >= 0.95 and index.recall >= 0.95


def test_exclude_same_camera_add_save_and_load(data, tmp_path):
    q, g = data
    half = len(g) // 2
    index = GalleryIndex.build(g.features[:half], g.pids[:half], g.camids[:half], g.paths[:half], kind="hnsw",
                               measure_recall=0)
    index.add(g.features[half:], g.pids[half:], g.camids[half:], g.paths[half:])
    assert len(index) == len(g) and index.paths == g.paths
    index.save(str(tmp_path / "g.idx"))
    loaded = GalleryIndex.load(str(tmp_path / "g.idx"))
    dist, rows = loaded.search(q.features, 5, q_camids=q.camids)
    assert (rows >= 0).all() and (loaded.camids[rows] != q.camids.numpy()[:, None]).all()
    assert (np.diff(dist, axis=1) >= 0).all()
    d_all, r_all = index.search(q.features, 50)  # the same items as the unfiltered ranking without that camera
    for i in range(len(q)):
        other = [r for r in r_all[i] if g.camids[r] != q.camids[i]][:5]
        if len(other) == 5:
            assert rows[i].tolist() == other


def test_command_line(data, tmp_path):
    f = synthetic_features(20, 2000, seed=2)
    f.save(str(tmp_path / "f.pt"))
    built = search.main(["build", "--features", str(tmp_path / "f.pt"), "--kind", "flat",
                         "--output", str(tmp_path / "g.idx")])
    assert built["size"] == 2000
    out = search.main(["query", "--index", str(tmp_path / "g.idx"), "--features", str(tmp_path / "f.pt"),
                       "--topk", "3", "--exclude-same-camera", "--output", str(tmp_path / "r.json")])
    saved = json.load(open(tmp_path / "r.json"))
    assert saved == json.loads(json.dumps(out)) and len(saved["queries"]) == 20
    first = saved["queries"][0]
    assert len(first["matches"]) == 3 and all(m["camid"] != first["camid"] for m in first["matches"])
    assert first["matches"][0]["path"].startswith("synthetic/")


@pytest.mark.parametrize("argv, message", [
    (["build", "--features", "{tmp}/nope.pt", "--output", "g.idx"], "features file .*nope.pt does not exist"),
    (["build", "--features", "{tmp}/f.pt", "--split", "3", "--output", "g.idx"], r".*f.pt holds splits \[0\], not 3"),
    (["build", "--features", "{tmp}/f.pt", "--kind", "lsh", "--output", "g.idx"], "argument --kind: invalid choice"),
    (["query", "--index", "{tmp}/f.pt", "--features", "{tmp}/f.pt", "--output", "r.json"],
     ".*f.pt is not a stafast.search index"),
    (["query", "--index", "g.idx", "--features", "f.pt", "--topk", "0", "--output", "r.json"],
     "--topk must be at least 1"),
])
def test_command_line_names_bad_input_in_one_line(argv, message, tmp_path, capsys):
    synthetic_features(4, 100, seed=3).save(str(tmp_path / "f.pt"))
    assert_one_line_error(capsys, search.main, "stafast.search", [a.format(tmp=tmp_path) for a in argv], message)


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="kind must be one of"):
        GalleryIndex.build(torch.randn(10, 8), kind="lsh")
    with pytest.raises(ValueError, match=r"features must be a floating \(n, dim\) array"):
        GalleryIndex.build(torch.zeros(10, dtype=torch.int64))
    index = GalleryIndex.build(torch.randn(10, 8))
    with pytest.raises(ValueError, match=r"queries must be a floating \(n, 8\) array, got \(2, 4\)"):
        index.search(torch.randn(2, 4))
    with pytest.raises(ValueError, match="3 features need as many pids, camids and paths, got 2"):
        index.add(torch.randn(3, 8), pids=[1, 2])
    torch.save({"x": 1}, tmp_path / "bad.idx")
    with pytest.raises(ValueError, match="bad.idx is not a stafast.search index"):
        GalleryIndex.load(str(tmp_path / "bad.idx"))
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'stafast\[search\]'"):
        GalleryIndex.build(torch.randn(10, 8))
