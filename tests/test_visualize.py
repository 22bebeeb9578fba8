import os

import numpy as np
import pytest
import torch
from PIL import Image

from stafast import embed, visualize
from stafast import train as T
from stafast.checkpoint import load_model
from stafast.data import MARS, DatasetError, synth

TINY = ["--arch", "resnet18", "--heads", "3", "--hidden", "8", "--frames", "4", "--height", "32", "--width", "16",
        "--ids-per-batch", "2", "--tracklets-per-id", "2", "--pipeline", "torch", "--workers", "0", "--no-progress",
        "--epochs", "1", "--no-eval"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = synth.make_mars(str(tmp_path_factory.mktemp("vis")), ids=3, test_ids=3, cameras=2, tracklets=1,
                           frames=(3, 6), size=(32, 16), seed=4)
    out = tmp_path_factory.mktemp("run")
    T.main(["--dataset", "synthetic", "--root", root, "--output", str(out), *TINY])
    return root, str(out / "checkpoint.pt")


def png_ok(path, min_size=(100, 100)):
    assert os.path.getsize(path) > 2000
    with Image.open(path) as im:
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        assert np.asarray(im.convert("L")).std() > 5  # not blank


def test_attention_figure_from_a_folder(trained, tmp_path, capsys):
    root, ckpt = trained
    folder = os.path.dirname(MARS(root).query[0].frames[0])
    out = tmp_path / "att.png"
    visualize.main(["attention", "--checkpoint", ckpt, "--tracklet", folder, "--out", str(out)])
    png_ok(out)
    assert "(17 panels)" in capsys.readouterr().out  # N=4 rows x (frame + K=3 heads) + temporal weights


def test_attention_panel_count(trained, tmp_path):
    _, ckpt = trained
    model, _ = load_model(ckpt)
    clip = torch.randn(4, 3, 32, 16)
    assert visualize.attention_figure(model, clip, str(tmp_path / "a.png")) == 4 * (3 + 1) + 1


def test_ranks_and_cmc(trained, tmp_path, capsys):
    root, ckpt = trained
    out, cmc = tmp_path / "ranks.png", tmp_path / "cmc.png"
    visualize.main(["ranks", "--checkpoint", ckpt, "--dataset", "synthetic", "--root", root, "--queries", "2",
                    "--topk", "3", "--out", str(out), "--cmc-out", str(cmc)])
    png_ok(out)
    png_ok(cmc)
    assert "(8 panels)" in capsys.readouterr().out  # 2 queries x (query + top 3)


@pytest.mark.parametrize("ext", [".npy", ".pt"])
def test_embed_folders(trained, tmp_path, ext):
    """MARS person folders, each holding a tracklet per camera: one embedding per tracklet."""
    root, ckpt = trained
    gallery = MARS(root).gallery
    folders = sorted({os.path.dirname(t.frames[0]) for t in gallery})[:3]
    want = {os.path.join(os.path.dirname(t.frames[0]), os.path.basename(t.frames[0])[:11]): t.frames
            for t in gallery if os.path.dirname(t.frames[0]) in folders}
    tracklets, names = embed.tracklets_from(folders)
    assert len(names) > len(folders) and dict(zip(names, (t.frames for t in tracklets))) == want
    out = str(tmp_path / f"emb{ext}")
    embed.main(["--checkpoint", ckpt, "--output", out, "--workers", "0", *folders])
    if ext == ".npy":
        emb = np.load(out)
        assert open(out + ".names.txt").read().split() == names
    else:
        saved = torch.load(out, weights_only=True)  # a features file (stafast.features)
        emb = saved["features"].numpy()
        assert saved["paths"] == names and saved["pids"].tolist() == [-1] * len(names)
    assert emb.shape == (len(names), 128)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, rtol=1e-5)


def test_embed_a_video_file(trained, tmp_path):
    av = pytest.importorskip("av") if not os.environ.get("CI") else __import__("av")
    _, ckpt = trained
    path = str(tmp_path / "walk.mp4")
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 64, "yuv420p"
        for i in range(7):
            img = np.full((64, 32, 3), 40 * (i % 5), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = str(tmp_path / "v.pt")
    embed.main(["--checkpoint", ckpt, "--output", out, "--workers", "0", path])
    saved = torch.load(out, weights_only=True)
    assert saved["features"].shape == (1, 128) and saved["paths"] == [os.path.normpath(path)]


def test_bad_inputs(trained, tmp_path):
    root, ckpt = trained
    with pytest.raises(FileNotFoundError, match="checkpoint .*missing.pt does not exist"):
        visualize.main(["attention", "--checkpoint", str(tmp_path / "missing.pt"), "--tracklet", root])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=r"empty holds no images"):
        embed.main(["--checkpoint", ckpt, "--output", str(tmp_path / "e.npy"), str(empty)])
    with pytest.raises(DatasetError, match="neither a folder of frames nor a video file"):
        embed.main(["--checkpoint", ckpt, "--output", str(tmp_path / "e.npy"), str(tmp_path / "nothing.txt")])
    state = torch.load(ckpt, weights_only=False)
    state["model_config"]["num_heads"] = 5
    bad = tmp_path / "bad_k.pt"
    torch.save(state, bad)
    with pytest.raises(ValueError, match="weights have K=3 spatial heads but its model_config says num_heads=5"):
        visualize.main(["attention", "--checkpoint", str(bad), "--tracklet", root])
