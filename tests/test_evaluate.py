"""Features files (stafast.embed --dataset, stafast.evaluate --features), --split all embedding each
tracklet once, and evaluation shared out over torchrun processes (gloo) giving the one-process figures."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from stafast import cli, embed
from stafast import evaluate as E
from stafast import train as T
from stafast.data import load_dataset, synth
from stafast.distributed import shard
from stafast.features import FORMAT, Features, FeaturesFileError, synthetic_features

TINY = ["--arch", "resnet18", "--heads", "2", "--hidden", "8", "--frames", "3", "--height", "32", "--width", "16",
        "--ids-per-batch", "2", "--tracklets-per-id", "2", "--pipeline", "torch", "--workers", "0", "--no-progress",
        "--epochs", "1", "--no-eval"]
FAST = ["--pipeline", "torch", "--workers", "0", "--batch-size", "128"]  # large batches: much faster on the CPU


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model trained for one epoch on a tiny synthetic set (the root in its config)."""
    out = tmp_path_factory.mktemp("run")
    tiny = synth.make_mars(str(out / "data"), ids=4, test_ids=3, cameras=2, tracklets=2, frames=(3, 6), size=(32, 16))
    T.main(["--dataset", "synthetic", "--root", tiny, "--output", str(out), *TINY])
    return str(out / "checkpoint.pt")


def metrics(summary: dict) -> dict:
    return {k: summary[k] for k in ("rank1", "rank5", "mAP")}


def test_embed_the_synthetic_default_then_evaluate_the_file_alone_and_under_torchrun(checkpoint, tmp_path):
    """embed --dataset synthetic (the default set) -> a features file; evaluate --features gives what
    evaluate with the model gives in two processes under torchrun (gloo), the features shared out
    and gathered in order."""
    features, root = str(tmp_path / "f.pt"), synth.cached_mars()
    embed.main(["--checkpoint", checkpoint, "--dataset", "synthetic", "--root", root, "--output", features, *FAST])
    f = Features.load(features)
    ds = load_dataset("synthetic", root)
    q, g = f.part(0, "query"), f.part(0, "gallery")
    assert q.paths == [t.frames[0] for t in ds.query] and g.paths == [t.frames[0] for t in ds.gallery]
    assert q.pids.tolist() == [t.pid for t in ds.query] and g.camids.tolist() == [t.camid for t in ds.gallery]
    assert len(f) == len(ds.gallery)  # official: the queries are gallery rows, embedded once
    torch.testing.assert_close(f.features.norm(dim=1), torch.ones(len(f)))
    assert torch.load(features, weights_only=True)["format"] == FORMAT and f.meta["gallery_protocol"] == "official"
    from_file = E.main(["--features", features])
    assert from_file["protocol"] == "official" and from_file["per_split"][0]["num_gallery"] == len(ds.gallery)
    run = torchrun("stafast.evaluate", "--checkpoint", checkpoint, "--dataset", "synthetic", "--root", root, *FAST,
                   "--output", str(tmp_path / "two.json"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert metrics(json.load(open(tmp_path / "two.json"))) == metrics(from_file)
    with pytest.raises(FeaturesFileError, match="built for protocol 'official'.* embed again with --protocol toolbox"):
        E.main(["--features", features, "--protocol", "toolbox"])  # MARS galleries depend on it: not evaluated wrongly


def torchrun(module: str, *args: str) -> subprocess.CompletedProcess:
    """python -m <module> args in 2 processes (gloo) started by torchrun on this machine."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", module, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_split_all_embeds_each_tracklet_once(checkpoint, tmp_path, monkeypatch):
    root = synth.make_prid2011(str(tmp_path / "prid"), cam_a=14, cam_b=16, shared=12, frames=(3, 5), size=(32, 16))
    splits = json.load(open(os.path.join(root, "splits_prid2011.json")))
    assert len(splits) == 10
    embedded = []
    original = E._embed
    monkeypatch.setattr(E, "_embed", lambda model, tracklets, *a: embedded.extend(tracklets) or original(model, tracklets, *a))
    features = str(tmp_path / "prid.pt")
    embed.main(["--checkpoint", checkpoint, "--dataset", "prid2011", "--root", root, "--split", "all",
                "--output", features, *FAST])
    distinct = {t for s in range(10) for ds in [load_dataset("prid2011", root, s)] for t in (*ds.query, *ds.gallery)}
    assert len(embedded) == len(set(embedded)) == len(distinct) < sum(
        len(ds.query) + len(ds.gallery) for ds in (load_dataset("prid2011", root, s) for s in range(10)))
    all_splits = E.main(["--features", features])
    assert all_splits["splits"] == list(range(10))
    alone = E.main(["--checkpoint", checkpoint, "--dataset", "prid2011", "--root", root, "--split", "7", *FAST])
    assert metrics(all_splits["per_split"][7]) == metrics(alone)  # a split of the shared file = that split alone


def test_shards_cover_the_list_in_order():
    for costs in ([1] * 10, [5, 1, 1, 1, 1, 1], [3], [], [1, 1]):
        for size in (1, 2, 3, 4):
            parts = [shard(costs, r, size) for r in range(size)]
            assert parts[0].start == 0 and parts[-1].stop == len(costs)
            assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
    assert [shard([1] * 10, r, 3) for r in range(3)] == [slice(0, 4), slice(4, 7), slice(7, 10)]
    assert [shard([8, 1, 1, 1, 1], r, 2) for r in range(2)] == [slice(0, 1), slice(1, 5)]  # by cost, not by count


def test_embed_under_torchrun_gathers_the_rows_in_order(checkpoint, tmp_path):
    root = load_dataset_root(checkpoint)
    args = ["--checkpoint", checkpoint, "--dataset", "synthetic", "--root", root, *FAST]
    run = torchrun("stafast.embed", *args, "--output", str(tmp_path / "two.pt"))
    assert run.returncode == 0, run.stderr[-3000:]
    embed.main([*args, "--output", str(tmp_path / "one.pt")])
    two, one = Features.load(str(tmp_path / "two.pt")), Features.load(str(tmp_path / "one.pt"))
    assert two.paths == one.paths and len(two) > 10
    torch.testing.assert_close(two.features, one.features, rtol=0, atol=1e-6)


def load_dataset_root(checkpoint: str) -> str:
    """The (tiny) training set of the checkpoint."""
    return torch.load(checkpoint, weights_only=False)["config"]["root"]


@pytest.mark.parametrize("module, argv, message", [
    ("evaluate", ["--features", "{tmp}/nope.pt"], "features file .*nope.pt does not exist"),
    ("evaluate", ["--features", "{tmp}/old.pt"], ".*old.pt is not a features file of format"),
    ("evaluate", ["--features", "{tmp}/f.pt", "--split", "3"], r".*f.pt holds splits \[0\], not 3"),
    ("evaluate", ["--checkpoint", "c.pt"], r"give --features F, or --checkpoint and --dataset \(one of them\)"),
    ("evaluate", ["--features", "f.pt", "--split", "one"], "argument --split: expected an integer or one of"),
    ("embed", ["--checkpoint", "c.pt", "--output", "e.txt", "folder"], "--output must end with .pt or .npy"),
    ("embed", ["--checkpoint", "c.pt", "--output", "e.pt"], "give folders of frames / video files, or --dataset"),
])
def test_command_lines_name_bad_input_in_one_line(module, argv, message, tmp_path, capsys):
    torch.save({"embeddings": torch.zeros(2, 3)}, tmp_path / "old.pt")
    synthetic_features(2, 20).save(str(tmp_path / "f.pt"))
    assert_one_line_error(capsys, {"evaluate": E.main, "embed": embed.main}[module], f"stafast.{module}",
                          [a.format(tmp=tmp_path) for a in argv], message)


def assert_one_line_error(capsys, main, module: str, argv: list[str], message: str) -> None:
    """`python -m module argv` (stafast.cli.run) exits 2 with `message` in one line, no traceback."""
    with pytest.raises(SystemExit) as stop:
        cli.run(main, module, argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err, err
    assert re.search(rf"(?m)^python -m {module}( \w+)?: error: {message}", err), err


def test_help_names_the_module(capsys):
    for main, module in ((E.main, "stafast.evaluate"), (embed.main, "stafast.embed")):
        with pytest.raises(SystemExit) as stop:
            main(["--help"])
        out = capsys.readouterr().out
        assert stop.value.code == 0 and out.startswith(f"usage: python -m {module} ") and "(default: 16)" in out


def test_features_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="features file .*nope.pt does not exist"):
        Features.load(str(tmp_path / "nope.pt"))
    torch.save({"embeddings": torch.zeros(2, 3)}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="not a features file of format 'stafast.features/1'"):
        Features.load(str(tmp_path / "old.pt"))
    with pytest.raises(ValueError, match=r"features has 2 rows but \{'camids': 3\}"):
        Features(torch.zeros(2, 3), torch.zeros(2), torch.zeros(3), ["a", "b"])
    with pytest.raises(ValueError, match=r"splits\[0\]\['gallery'\] must be row indices in 0..1"):
        Features(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2), ["a", "b"],
                 splits={0: {"query": torch.tensor([0]), "gallery": torch.tensor([2])}})
    f = Features(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2), ["a", "b"])
    with pytest.raises(KeyError, match="this features file has splits"):
        f.part(0, "query")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_extract_on_a_gpu_runs_bf16_channels_last(checkpoint):
    from stafast.checkpoint import load_model
    model, state = load_model(checkpoint, "cuda")
    cfg, tracklets = state["config"], load_dataset("synthetic", load_dataset_root(checkpoint)).gallery
    kw = dict(batch_size=4, pipeline="torch", workers=0, device="cuda", progress=False)
    fp32 = E.extract(model, tracklets, cfg.frames, cfg.height, cfg.width, amp_dtype=None, **kw)[0]
    bf16 = E.extract(model, tracklets, cfg.frames, cfg.height, cfg.width, **kw)[0]  # "auto": bf16 on a GPU
    assert model.backbone.body[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(fp32, bf16) and (fp32 * bf16).sum(1).min() > 0.98
