"""DukeMTMC-VideoReID, LS-VID, MEVID and CCVID loaders on synthetic trees in their published layouts,
the dataset registry, and torchreid's DukeV parse as a peer (when torchreid is installed)."""
import os
import re
import shutil
import sys

import numpy as np
import pytest

from stafast.data import CCVID, DATASETS, LSVID, MEVID, DatasetError, DukeV, load_dataset, synth
from stafast.data.catalog import default_protocol

SMALL = dict(ids=4, test_ids=4, frames=(2, 4), size=(16, 8))


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    return {name: make(str(base / name), seed=3, **SMALL) for name, make in synth.LAYOUTS.items()}


@pytest.fixture()
def copy(trees, tmp_path):
    """A private copy of a layout's tree, to break."""
    return lambda name: shutil.copytree(trees[name], tmp_path / name)


def numbers(paths, pattern):
    return [int(re.search(pattern, os.path.basename(p))[1]) for p in paths]


def lines(path):
    return [line.split() for line in open(path) if line.strip()]


# ------------------------------------------------------------------------------------ counts
def test_dukev_counts_match_the_folders(trees):
    root = trees["dukev"]
    ds = DukeV(root)
    for split, tracklets in (("query", ds.query), ("gallery", ds.gallery)):
        folders = sorted(os.path.join(root, split, p, t) for p in os.listdir(os.path.join(root, split))
                         for t in os.listdir(os.path.join(root, split, p)))
        assert sorted(os.path.dirname(t.frames[0]) for t in tracklets) == folders
        assert sum(len(t) for t in tracklets) == sum(len(os.listdir(f)) for f in folders)
    assert ds.num_train_pids == 4 and {t.pid for t in ds.train} == set(range(4))
    assert {t.pid for t in ds.query} == set(range(5, 9)) and len(ds.query) == 4  # one query per test id
    distractors = {t.pid for t in ds.gallery} - {t.pid for t in ds.query}
    assert len(distractors) == 3 and all(len({t.camid for t in ds.gallery if t.pid == d}) == 1 for d in distractors)
    assert all("_D" in f for t in ds.gallery if t.pid in distractors for f in t.frames)
    for t in ds.query + ds.gallery:  # camera from the names
        assert {int(re.search(r"_C(\d+)_", f)[1]) for f in t.frames} == {t.camid}
    assert any(numbers(t.frames, r"_F(\d+)_")[0] == 2 for t in ds.gallery)  # tracklets starting at F0002 kept whole


def test_lsvid_counts_match_the_lists(trees):
    root = trees["lsvid"]
    ds = LSVID(root)
    train = lines(os.path.join(root, "list_sequence", "list_seq_train.txt"))
    test = lines(os.path.join(root, "list_sequence", "list_seq_test.txt"))
    import h5py
    query = h5py.File(os.path.join(root, "test", "data", "info_test.mat"))["query"][()].ravel().astype(int) - 1
    assert len(ds.train) == len(train) and len(ds.query) == len(query) == 4
    assert len(ds.gallery) == len(test) - len(query)
    assert [t.pid for t in ds.query] == [int(test[i][1]) for i in query]
    gallery_lines = [test[i] for i in range(len(test)) if i not in set(query)]
    for t, (prefix, pid) in zip(ds.gallery, gallery_lines):
        assert all(os.path.basename(f).startswith(os.path.basename(prefix) + "_") for f in t.frames)
        assert t.pid == int(pid) and t.camid == int(os.path.basename(prefix).split("_")[2])
    assert {t.pid for t in ds.gallery} - {t.pid for t in ds.query}  # distractor ids, gallery only


def test_mevid_counts_rows_and_attributes(trees):
    root = trees["mevid"]
    ds = MEVID(root)
    info = np.loadtxt(os.path.join(root, "track_test_info.txt")).astype(int)
    query = np.loadtxt(os.path.join(root, "query_IDX.txt")).astype(int)
    names = [n for (n,) in lines(os.path.join(root, "test_name.txt"))]
    assert len(ds.train) == len(np.loadtxt(os.path.join(root, "track_train_info.txt")))
    assert len(ds.query) == len(query) and len(ds.gallery) == len(info) - len(query)
    for t, (start, end, pid, outfit, cam) in zip(ds.query, info[query]):
        assert [os.path.basename(f) for f in t.frames] == names[start:end + 1]  # inclusive, 0-based
        assert (t.pid, t.camid) == (pid, cam) and t.attrs["location"] == int(cam not in {329, 330, 507, 508, 509})
    outfits = {(t.pid, int(os.path.basename(t.frames[0])[5:8])): t.attrs["clothes"] for t in ds.query + ds.gallery}
    assert len(set(outfits.values())) == len(outfits)  # one clothes id per (person, outfit)
    scales = dict(lines(os.path.join(root, "test_track_scale.txt")))
    for t in ds.query + ds.gallery:
        assert t.attrs["scale"] == {"m": 0, "l": 1}[scales[os.path.basename(t.frames[-1])]]


def test_ccvid_counts_cameras_and_clothes(trees):
    root = trees["ccvid"]
    ds = CCVID(root)
    rows = {s: lines(os.path.join(root, f"{s}.txt")) for s in ("train", "query", "gallery")}
    assert [len(ds.train), len(ds.query), len(ds.gallery)] == [len(rows[s]) for s in rows]
    for t, (folder, pid, clothes) in zip(ds.query + ds.gallery, rows["query"] + rows["gallery"]):
        session, walk = int(folder[7]), int(folder[-2:])
        assert t.pid == int(pid) and t.camid == walk + 12 * (session == 3)  # as Simple-CCReID derives it
        assert len(t) == len(os.listdir(os.path.join(root, folder)))
    test = [(int(p), c) for _, p, c in rows["query"] + rows["gallery"]]
    labels = [t.attrs["clothes"] for t in ds.query + ds.gallery]
    assert all((labels[i] == labels[j]) == (test[i] == test[j]) for i in range(len(test)) for j in range(len(test)))


# ----------------------------------------------------------------------------- frame order
def test_dukev_frames_by_index_not_name_order(copy):
    root = copy("dukev")
    folder = os.path.join(root, "query", "0005", "0001")
    src = os.path.join(folder, os.listdir(folder)[0])
    for f in os.listdir(folder):
        os.remove(os.path.join(folder, f)) if os.path.join(folder, f) != src else None
    for n in (1000, 9, 99):  # string order would be 1000, 99, 9
        shutil.copy(src, os.path.join(folder, f"0005_C{os.path.basename(src)[6]}_F{n}_X{n * 12}.jpg"))
    os.remove(src)
    t = next(t for t in DukeV(root).query if t.pid == 5)
    assert numbers(t.frames, r"_F(\d+)_") == [9, 99, 1000]


def test_lsvid_frames_by_number(copy):
    root = copy("lsvid")
    prefix = lines(os.path.join(root, "list_sequence", "list_seq_test.txt"))[0][0]
    folder, stem = os.path.split(os.path.join(root, prefix))
    src = next(os.path.join(folder, f) for f in os.listdir(folder) if f.startswith(stem + "_"))
    for f in [f for f in os.listdir(folder) if f.startswith(stem + "_")]:
        os.remove(os.path.join(folder, f)) if os.path.join(folder, f) != src else None
    for n in (100, 9, 10):
        shutil.copy(src, os.path.join(folder, f"{stem}_{n}.jpg"))
    os.remove(src)
    t = next(t for t in LSVID(root).query + LSVID(root).gallery if os.path.basename(t.frames[0]).startswith(stem))
    assert numbers(t.frames, r"_(\d+)\.jpg$") == [9, 10, 100]


def test_mevid_frames_by_number_not_list_order(copy):
    root = copy("mevid")
    path = os.path.join(root, "test_name.txt")
    names = open(path).read().split()
    start, end = np.loadtxt(os.path.join(root, "track_test_info.txt")).astype(int)[0, :2]
    names[start:end + 1] = names[start:end + 1][::-1]
    open(path, "w").write("\n".join(names) + "\n")
    t = MEVID(root).query[0]
    assert numbers(t.frames, r"F(\d+)\.jpg$") == list(range(end - start + 1))


def test_ccvid_frames_by_number(copy):
    root = copy("ccvid")
    folder = os.path.join(root, lines(os.path.join(root, "query.txt"))[0][0])
    files = sorted(os.listdir(folder))
    for f in files[1:]:
        os.remove(os.path.join(folder, f))
    for n in (10, 100, 9):
        shutil.copy(os.path.join(folder, files[0]), os.path.join(folder, f"{n}.jpg"))
    os.remove(os.path.join(folder, files[0]))
    assert numbers(CCVID(root).query[0].frames, r"(\d+)\.jpg$") == [9, 10, 100]


# ------------------------------------------------------------------------ junk, skipped rows
def test_lsvid_junk_line_is_not_in_the_gallery(copy):
    root = copy("lsvid")
    path = os.path.join(root, "list_sequence", "list_seq_test.txt")
    rows = lines(path)
    rows[-1][1] = "-1"
    open(path, "w").write("\n".join(" ".join(r) for r in rows) + "\n")
    ds = LSVID(root)
    assert all(t.pid != -1 for t in ds.gallery) and len(ds.gallery) == len(rows) - len(ds.query) - 1


def test_mevid_row_without_chips_is_skipped_with_a_warning(copy):
    root = copy("mevid")
    path = os.path.join(root, "track_test_info.txt")
    info = np.loadtxt(path)
    query = int(np.loadtxt(os.path.join(root, "query_IDX.txt"))[0])
    info[query, :2] = info[query, 1], info[query, 0] - 1  # start > end: no chips
    np.savetxt(path, info)
    with pytest.warns(UserWarning, match=rf"track_test_info.txt line {query + 1}: start .* > end .*skipped"):
        ds = MEVID(root)
    assert ds.skipped == [f"{path} line {query + 1}"] and len(ds.query) == len(MEVID_QUERIES(root)) - 1


def MEVID_QUERIES(root):
    return np.loadtxt(os.path.join(root, "query_IDX.txt")).reshape(-1)


# ---------------------------------------------------------------------------------- bad trees
@pytest.mark.parametrize("name, remove", [
    ("dukev", "gallery"), ("lsvid", "list_sequence/list_seq_test.txt"), ("lsvid", "test/data/info_test.mat"),
    ("mevid", "track_test_info.txt"), ("mevid", "query_IDX.txt"), ("mevid", "train_name.txt"),
    ("ccvid", "gallery.txt")])
def test_missing_file_names_it(copy, name, remove):
    root = copy(name)
    path = os.path.join(root, remove)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    with pytest.raises(DatasetError, match=re.escape(os.path.basename(remove))):
        load_dataset(name, str(root))


def test_lsvid_accepts_the_info_folder_copies(copy):
    root = copy("lsvid")
    os.makedirs(os.path.join(root, "info"))
    shutil.move(os.path.join(root, "list_sequence"), os.path.join(root, "info", "list_sequence"))
    shutil.move(os.path.join(root, "test", "data"), os.path.join(root, "info", "data"))
    assert len(LSVID(root).query) == 4


@pytest.mark.parametrize("name", ["lsvid", "ccvid", "mevid", "dukev"])
def test_list_naming_a_missing_folder(copy, name):
    root = copy(name)
    if name == "lsvid":
        prefixes = [p for p, _ in lines(os.path.join(root, "list_sequence", "list_seq_test.txt"))]
        folder = os.path.dirname(prefixes[-1])
        shutil.rmtree(os.path.join(root, folder))
        first = 1 + [os.path.dirname(p) for p in prefixes].index(folder)
        match = rf"list_seq_test.txt line {first}\): directory .*{re.escape(folder)} does not exist"
    elif name == "ccvid":
        folder = lines(os.path.join(root, "gallery.txt"))[1][0]
        shutil.rmtree(os.path.join(root, folder))
        match = r"gallery.txt line 2\).*" + re.escape(folder)
    elif name == "mevid":
        shutil.rmtree(os.path.join(root, "bbox_test", "0006"))
        match = r"track_test_info.txt line \d+: .*bbox_test/0006/0006O\d+C\d+T\d+F\d+\.jpg does not exist"
    else:  # a tracklet folder emptied
        folder = os.path.join(root, "gallery", "0006", sorted(os.listdir(os.path.join(root, "gallery", "0006")))[0])
        for f in os.listdir(folder):
            os.remove(os.path.join(folder, f))
        match = "holds no frames"
    with pytest.raises(DatasetError, match=match):
        load_dataset(name, str(root))


def test_lsvid_query_file_that_is_not_hdf5(copy):
    root = copy("lsvid")
    path = os.path.join(root, "test", "data", "info_test.mat")
    import scipy.io
    scipy.io.savemat(path, {"query": np.arange(1, 5)})  # a MATLAB v5 file: not what LS-VID ships
    with pytest.raises(DatasetError, match=r"info_test.mat is not a MATLAB v7.3 \(HDF5\) file"):
        LSVID(root)
    open(path, "wb").write(b"garbage")
    with pytest.raises(DatasetError, match=r"info_test.mat is not a MATLAB v7.3 \(HDF5\) file"):
        LSVID(root)


def test_lsvid_bad_query_variable(copy):
    root = copy("lsvid")
    path = os.path.join(root, "test", "data", "info_test.mat")
    synth.save_mat73(path, gallery=[1, 2])
    with pytest.raises(DatasetError, match=r"has no numeric variable 'query' \(found \['gallery'\]\)"):
        LSVID(root)
    synth.save_mat73(path, query=[1, 99])
    with pytest.raises(DatasetError, match=r"1-based lines of list_seq_test.txt \(1..\d+\), got values in \[1.0, 99.0\]"):
        LSVID(root)


def test_lsvid_without_h5py_names_the_install(trees, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"info_test.mat \(MATLAB v7.3, HDF5\) needs the module h5py.*"
                                          r"pip install 'stafast\[hdf5\]'"):
        LSVID(trees["lsvid"])


def test_malformed_fields_name_file_line_and_field(copy):
    root = copy("mevid")
    path = os.path.join(root, "track_test_info.txt")
    rows = open(path).read().splitlines()
    rows[1] = rows[1].replace(rows[1].split()[2], "5.5", 1)
    open(path, "w").write("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"track_test_info.txt line 2: person id must be an integer, got '5.5'"):
        MEVID(root)
    open(path, "w").write("0 1 2\n")
    with pytest.raises(DatasetError, match=r"track_test_info.txt line 1: 3 fields .*expected 5 like '0 9 103 20 424'"):
        MEVID(root)
    root = copy("ccvid")
    open(os.path.join(root, "query.txt"), "a").write("session1/001-01 1 u0\n")
    with pytest.raises(DatasetError, match=r"query.txt line \d+: tracklet folder 'session1/001-01' is not"):
        CCVID(root)


def test_mevid_rows_outside_the_name_list_or_disagreeing(copy):
    root = copy("mevid")
    path = os.path.join(root, "track_test_info.txt")
    info = np.loadtxt(path)
    info[-1, 1] += 50
    np.savetxt(path, info)
    with pytest.raises(DatasetError, match=rf"line {len(info)}: chips \[\d+, \d+\] are outside the name list"):
        MEVID(root)
    info[-1, 1] -= 50
    camera, info[0, 4] = info[0, 4], 999
    np.savetxt(path, info)
    with pytest.raises(DatasetError, match=r"line 1: person \d+ outfit \d+ camera 999 disagree with its chips"):
        MEVID(root)
    info[0, 4] = camera
    np.savetxt(path, info[:3])
    with pytest.raises(DatasetError, match=r"query_IDX.txt: query rows must be 0-based rows .*\(0..2\)"):
        MEVID(root)


def test_dukev_names_that_disagree_with_the_folder(copy):
    root = copy("dukev")
    folder = os.path.join(root, "train", "0001", sorted(os.listdir(os.path.join(root, "train", "0001")))[0])
    f = sorted(os.listdir(folder))[0]
    os.rename(os.path.join(folder, f), os.path.join(folder, "0002" + f[4:]))
    with pytest.raises(DatasetError, match="person 2 in the name, but it is in the folder of person 1"):
        DukeV(root)
    os.rename(os.path.join(folder, "0002" + f[4:]), os.path.join(folder, f[:6] + "9" + f[7:]))
    with pytest.raises(DatasetError, match=r"names cameras \[\d, 9\]|names cameras \[9"):
        DukeV(root)
    os.rename(os.path.join(folder, f[:6] + "9" + f[7:]), os.path.join(folder, "frame.jpg"))
    with pytest.raises(DatasetError, match="frame.jpg: expected a frame name like 0001_C6_F0099_X30823.jpg"):
        DukeV(root)


# --------------------------------------------------------------------------------- registry
def test_registry_builds_every_name(trees, tmp_path):
    roots = {**trees, "synthetic": str(tmp_path / "syn")}
    synth.make_mars(roots["synthetic"], ids=2, test_ids=2, cameras=2, frames=(1, 2), size=(16, 8))
    synth.make_videos(str(tmp_path / "vid"), ids=2, test_ids=2, cameras=2, frames=(2, 3), size=(16, 16), codec="mjpeg")
    roots["videos"] = str(tmp_path / "vid")
    for name, e in DATASETS.items():
        if name in roots:
            ds = load_dataset(name, roots[name])
            assert isinstance(ds, e.cls) and e.default_protocol in ds.PROTOCOLS and ds.query and ds.gallery
    assert {n: default_protocol(n) for n in ("mars", "dukev", "lsvid", "mevid", "ccvid", "synthetic")} == {
        "mars": "gallery+query", "dukev": "toolbox", "lsvid": "toolbox", "mevid": "general", "ccvid": "general",
        "synthetic": "official"}
    with pytest.raises(ValueError, match=r"dataset ccvid has no protocol 'gallery\+query'; its protocols are"):
        load_dataset("ccvid", trees["ccvid"], protocol="gallery+query")
    with pytest.raises(ValueError, match=r"--root is required for --dataset dukev \(the folder holding train/"):
        load_dataset("dukev")
    with pytest.raises(ValueError, match="unknown dataset 'market'"):
        load_dataset("market", "x")


def test_mars_gallery_plus_query(tmp_path):
    root = synth.make_mars(str(tmp_path), ids=2, test_ids=4, cameras=3, frames=(1, 2), size=(16, 8), seed=1)
    official, toolbox, both = (load_dataset("synthetic", root, protocol=p) for p in ("official", "toolbox",
                                                                                     "gallery+query"))
    assert both.gallery == both.query + toolbox.gallery  # the queries first, as AP3D / SINet concatenate them
    assert len(official.gallery) == len(toolbox.gallery) + len(both.query) + sum(t.pid == -1 for t in official.gallery)


# ----------------------------------------------------------------- torchreid 0.2.5 as a peer
@pytest.mark.filterwarnings("ignore")
def test_dukev_agrees_with_torchreid_except_where_it_drops_frames(trees, tmp_path):
    """torchreid's DukeMTMCVidReID on the same tree: the same tracklets, ids and cameras (its are
    0-based), and the same frames except that a tracklet whose indices start at F0002 loses its
    last frame there (it looks F0001..F{n} up)."""
    pytest.importorskip("torchreid")
    try:  # the PyPI package (Torchreid-Pip 0.2.5) nests the library under torchreid.reid
        from torchreid.reid.data.datasets import video
    except ImportError:
        from torchreid.data.datasets import video
    root = tmp_path / "dukemtmc-vidreid"
    shutil.copytree(trees["dukev"], root / "DukeMTMC-VideoReID")
    peer = video.DukeMTMCVidReID(root=str(tmp_path), transform=lambda img: img)  # it refuses None
    ours = DukeV(str(root / "DukeMTMC-VideoReID"))
    for mine, theirs in ((ours.query, peer.query), (ours.gallery, peer.gallery)):
        theirs = {os.path.dirname(item[0][0]): (tuple(item[0]), *item[1:3]) for item in theirs}  # (+ dsetid)
        assert len(theirs) == len(mine)
        for t in mine:
            paths, pid, cam = theirs[os.path.dirname(t.frames[0])]
            assert (pid, cam + 1) == (t.pid, t.camid)
            starts_at_2 = numbers(t.frames[:1], r"_F(\d+)_") == [2]
            assert paths == (t.frames[:-1] if starts_at_2 else t.frames)


# ------------------------------------------------------------------------------ data.check
@pytest.fixture()
def as_published(monkeypatch, trees):
    """PUBLISHED[name] replaced by the intact synthetic tree's own figures, so that it is "the published tree"."""
    from stafast.data import check

    def publish(name):
        ds = load_dataset(name, trees[name])
        test = check.unique(ds.query + ds.gallery)
        figures = {s: check.counts(t) for s, t in (("train", ds.train), ("query", ds.query), ("gallery", ds.gallery),
                                                     ("test", test))}
        spec = check.PUBLISHED[name]
        monkeypatch.setitem(check.PUBLISHED, name, check.Published(
            "the intact synthetic tree", figures, spec.marker, check.summary(ds)["cameras"], spec.folders))
    return publish


def run_check(name, root):
    import io
    from stafast.data import check
    out = io.StringIO()
    code = check.check(name, str(root), out)
    return code, out.getvalue()


@pytest.mark.parametrize("name", list(synth.LAYOUTS))
def test_check_passes_the_published_tree_and_flags_a_removed_list(as_published, copy, name):
    as_published(name)
    root = copy(name)
    code, text = run_check(name, root)
    assert code == 0 and "the published tree" in text, text
    removed = {"dukev": "query", "lsvid": "list_sequence/list_seq_train.txt", "mevid": "test_name.txt",
               "ccvid": "query.txt"}[name]
    path = os.path.join(root, removed)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    code, text = run_check(name, root)
    assert code == 1 and "not loadable: missing" in text and os.path.basename(removed) in text, text


@pytest.mark.parametrize("name", list(synth.LAYOUTS))
def test_check_flags_a_missing_tracklet_folder(as_published, copy, name):
    as_published(name)
    root = copy(name)
    folder = (lines(os.path.join(root, "gallery.txt"))[0][0] if name == "ccvid" else
              "gallery/0006/" + sorted(os.listdir(os.path.join(root, "gallery", "0006")))[0] if name == "dukev" else
              {"lsvid": "tracklet_test/0006", "mevid": "bbox_test/0006"}[name])
    shutil.rmtree(os.path.join(root, folder))
    code, text = run_check(name, root)
    assert code == 1, text
    if name == "dukev":  # the folder-based layout loads: its counts give it away
        assert "not the published tree" in text and "- gallery tracklets: " in text
    else:
        assert "not loadable: missing" in text and folder in text


def test_check_missing_frame_stray_file_and_root_hint(as_published, copy):
    as_published("mevid")
    root = copy("mevid")
    t = MEVID(root).gallery[0]
    os.remove(t.frames[1])  # not the first or last: the loader does not look there
    shutil.copy(t.frames[0], os.path.join(os.path.dirname(t.frames[0]), "stray.jpg"))
    code, text = run_check("mevid", root)
    assert code == 1 and f"1 frame files named by the lists are missing, e.g. {t.frames[1]}" in text
    assert "1 image files in the frame folders belong to no tracklet, e.g. " in text and "stray.jpg" in text
    code, text = run_check("mevid", os.path.dirname(root))
    assert code == 1 and f"try --root {root}" in text
    code, text = run_check("mevid", os.path.join(root, "bbox_test"))
    assert code == 1 and f"try --root {root}" in text


def test_check_command_line(trees):
    import subprocess
    p = subprocess.run([sys.executable, "-m", "stafast.data.check", "--dataset", "ccvid", "--root", trees["ccvid"]],
                       capture_output=True, text=True)
    assert p.returncode == 1 and f"- train tracklets: {len(CCVID(trees['ccvid']).train)}, published 948" in p.stdout
