import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from stafast import train as T
from stafast.data import synth
from stafast.evaluate import load_model

TINY = ["--arch", "resnet18", "--heads", "2", "--hidden", "8", "--frames", "3", "--height", "32", "--width", "16",
        "--ids-per-batch", "2", "--tracklets-per-id", "2", "--pipeline", "torch", "--workers", "0", "--no-progress",
        "--lr", "0.01"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return synth.make_mars(str(tmp_path_factory.mktemp("tiny")), ids=4, test_ids=3, cameras=2, tracklets=2,
                           frames=(3, 6), size=(32, 16), seed=0)


def run(root, out, *extra):
    return T.main(["--dataset", "synthetic", "--root", root, "--output", str(out), *TINY, *extra])


def test_end_to_end_writes_metrics_and_a_loadable_checkpoint(tiny_root, tmp_path):
    result = run(tiny_root, tmp_path, "--epochs", "2", "--loss", "oim")
    metrics = json.load(open(tmp_path / "metrics.json"))["latest"]
    for key in ("rank1", "rank5", "rank10", "mAP", "protocol", "dataset", "split", "epoch", "chance_rank1"):
        assert key in metrics, key
    assert ("rank20" in metrics) == (metrics["num_gallery"] >= 20)  # CMC is as long as the gallery
    assert metrics["epoch"] == 2 and metrics["dataset"] == "synthetic" and 0 <= metrics["rank1"] <= 1
    assert result["oim_table"] is not None
    model, state = load_model(str(tmp_path / "checkpoint.pt"))
    assert state["epoch"] == 2 and model.num_heads == 2


def test_resume_continues_exactly(tiny_root, tmp_path):
    full = run(tiny_root, tmp_path / "full", "--epochs", "2", "--deterministic", "--no-eval", "--loss", "oim")
    assert not full["stopped"]
    stopped = run(tiny_root, tmp_path / "cut", "--epochs", "2", "--deterministic", "--no-eval", "--loss", "oim",
                  "--max-steps", "3")
    assert stopped["stopped"]
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["step"] == 1  # mid-epoch (2 steps/epoch)
    resumed = run(tiny_root, tmp_path / "cut", "--epochs", "2", "--deterministic", "--no-eval", "--loss", "oim",
                  "--resume")
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 4
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    torch.testing.assert_close(full["oim_table"], resumed["oim_table"], rtol=0, atol=0)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_root, tmp_path, capsys):
    run(tiny_root, tmp_path, "--epochs", "1", "--no-eval")
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit) as e:
        run(tiny_root, tmp_path, "--epochs", "2", "--no-eval", "--resume", "--diversity-weight", "nan")
    assert e.value.code == 3
    assert "non-finite loss nan" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_kill_during_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    T.save_atomic({"step": 0, "weights": torch.zeros(10)}, str(path))
    writer = subprocess.Popen([sys.executable, "-c", f"""
import torch
from stafast.train import save_atomic
step = 0
while True:
    step += 1
    save_atomic({{"step": step, "weights": torch.randn(4_000_000)}}, {str(path)!r})
"""])
    time.sleep(3.0)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    state = torch.load(path, weights_only=False)  # loadable: either the first or one fully written
    assert state["step"] == 0 or state["weights"].numel() == 4_000_000


def _ddp_worker(rank, world, root, out, port):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = run(root, out, "--epochs", "1", "--no-eval", "--loss", "oim", "--max-steps", "2")
    torch.save(result["oim_table"], os.path.join(out, f"oim_rank{rank}.pt"))


def test_ddp_two_gloo_processes_keep_one_oim_table(tiny_root, tmp_path):
    import torch.multiprocessing as mp
    port = 29500 + os.getpid() % 1000
    mp.spawn(_ddp_worker, args=(2, tiny_root, str(tmp_path), port), nprocs=2, join=True)
    t0, t1 = (torch.load(tmp_path / f"oim_rank{r}.pt") for r in (0, 1))
    assert t0.abs().sum() > 0  # the table was updated
    torch.testing.assert_close(t0, t1, rtol=0, atol=0)


def test_sharded_plan_splits_every_global_batch():
    from stafast.data import ClipPlan, Tracklet
    tracklets = [Tracklet((f"f{i}",), i % 4, 1) for i in range(16)]
    plan = ClipPlan(tracklets, 3, "train", seed=0, ids_per_batch=2, tracklets_per_id=2)
    shards = [T.ShardedPlan(plan, r, 2, 4) for r in (0, 1)]
    full = plan.order(0)
    merged = [x for b in range(len(full) // 4) for s in shards for x in s.order(0)[b * 2:(b + 1) * 2]]
    assert merged == list(full)
    assert shards[1].sample(0, 0)[0] == plan.sample(0, 2)[0]


def test_bad_arguments(tiny_root, tmp_path):
    with pytest.raises(SystemExit):
        T.parse_args(["--stages", "1,5"])
    with pytest.raises(ValueError, match="--root is required for --dataset mars"):
        T.main(["--dataset", "mars", "--output", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="--resume: checkpoint .* does not exist"):
        run(tiny_root, tmp_path / "none", "--resume")
