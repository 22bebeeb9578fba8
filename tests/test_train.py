import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from stafast import optim
from stafast import train as T
from stafast.checkpoint import load_checkpoint, load_model, save_atomic
from stafast.config import STAGES, StageSpec, TrainConfig
from stafast.data import DATASET_NAMES, ClipPlan, ShardedPlan, Tracklet, synth
from stafast.metrics import PROTOCOLS

TINY = ["--arch", "resnet18", "--heads", "2", "--hidden", "8", "--frames", "3", "--height", "32", "--width", "16",
        "--ids-per-batch", "2", "--tracklets-per-id", "2", "--pipeline", "torch", "--workers", "0", "--no-progress",
        "--lr", "0.01"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    # 4 training ids, 2 per batch: 2 steps per epoch
    return synth.make_mars(str(tmp_path_factory.mktemp("tiny")), ids=4, test_ids=3, cameras=2, tracklets=2,
                           frames=(3, 6), size=(32, 16), seed=0)


def run(root, out, *extra):
    return T.main(["--dataset", "synthetic", "--root", root, "--output", str(out), *TINY, *extra])


def test_end_to_end_writes_metrics_and_a_loadable_checkpoint(tiny_root, tmp_path):
    result = run(tiny_root, tmp_path, "--epochs", "2", "--loss", "oim")
    saved = json.load(open(tmp_path / "metrics.json"))
    metrics = saved["latest"]
    for key in ("rank1", "rank5", "rank10", "mAP", "protocol", "dataset", "split", "epoch", "chance_rank1"):
        assert key in metrics, key
    assert ("rank20" in metrics) == (metrics["num_gallery"] >= 20)  # CMC is as long as the gallery
    assert metrics["epoch"] == 2 and metrics["dataset"] == "synthetic" and 0 <= metrics["rank1"] <= 1
    assert [r["epoch"] for r in saved["history"]] == [1, 2] and "rank1" not in saved["history"][0]
    for record in saved["history"]:  # per-epoch mean train losses
        assert record["train_loss"] == pytest.approx(record["train_id"] + record["train_diversity"])
        assert record["train_id"] > 0 and record["train_diversity"] > 0 and record["global_step"] == 2 * record["epoch"]
    assert result["oim_table"] is not None
    model, state = load_model(str(tmp_path / "checkpoint.pt"))
    assert state["format"] == 3 and state["epoch"] == 2 and model.num_heads == 2
    cfg = state["config"]
    assert isinstance(cfg, TrainConfig) and cfg.frames == 3 and cfg.loss == "oim" and cfg.stages == (4,)


# ------------------------------------------------------------------------------------------ resume
def final_state(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)


def assert_same_weights(a, b):
    assert a["global_step"] == b["global_step"] and a["stage_index"] == b["stage_index"]
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
    for part in ("model", "criterion"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=0, atol=0, msg=f"{part}.{k}")
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert x.keys() == y.keys()  # SGD's momentum buffer, Adam's moments and step count
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)
    assert a["scheduler"] == b["scheduler"]


SCHEDULES = {  # name: flags, a run of 2 steps per epoch (OIM unless they say otherwise)
    "one stage": ["--epochs", "2"],
    # with every augmentation, the triplet term, Adam, a warmup and the authors' Q as well
    "two stages": ["--stages", "3,4", "--epochs", "1,1", "--augment", "crop,flip,erase", "--loss", "oim+triplet",
                   "--label-smoothing", "0.1", "--optimizer", "adam", "--lr", "3.5e-4", "--warmup-epochs", "1",
                   "--diversity-form", "authors"],
}
_uninterrupted = {}


def uninterrupted(root, tmp_path_factory, schedule):
    """The reference: the schedule run in one go (cached per schedule for this module)."""
    if schedule not in _uninterrupted:
        out = tmp_path_factory.mktemp("full")
        run(root, out, "--loss", "oim", *SCHEDULES[schedule], "--deterministic", "--no-eval")
        _uninterrupted[schedule] = final_state(out)
    return _uninterrupted[schedule]


@pytest.mark.parametrize("schedule, max_steps, where, ended", [
    ("one stage", 4, (0, 2, 0), 2),   # the scenario: the last step of the last epoch, then the same + --resume
    ("one stage", 2, (0, 1, 0), 1),   # the last step of an epoch, with more to come: the epoch still ends
    ("one stage", 3, (0, 1, 1), 1),   # mid-epoch
    ("two stages", 2, (0, 1, 0), 1),  # the last step of a stage
    ("two stages", 3, (1, 0, 1), 1),  # mid-way into the second stage
])
def test_resume_from_max_steps_ends_with_the_weights_of_an_uninterrupted_run(tiny_root, tmp_path, tmp_path_factory,
                                                                            schedule, max_steps, where, ended):
    flags = ["--loss", "oim", *SCHEDULES[schedule], "--deterministic", "--no-eval"]
    stopped = run(tiny_root, tmp_path, *flags, "--max-steps", str(max_steps))
    assert stopped["stopped"]
    state = final_state(tmp_path)
    assert (state["stage_index"], state["epoch"], state["step"]) == where
    # every epoch that ran to its last step has its record, the one --max-steps ended included
    assert len(json.load(open(tmp_path / "metrics.json"))["history"]) == ended
    # The same command again with --resume: --max-steps is already reached, so the run only finishes
    # an epoch it stopped in the middle of; then without the limit it runs to the end.
    again = run(tiny_root, tmp_path, *flags, "--max-steps", str(max_steps), "--resume")
    assert again["stopped"] == (max_steps < 4)
    resumed = run(tiny_root, tmp_path, *flags, "--resume")
    assert not resumed["stopped"]
    assert_same_weights(uninterrupted(tiny_root, tmp_path_factory, schedule), final_state(tmp_path))
    history = json.load(open(tmp_path / "metrics.json"))["history"]
    assert [(r["stage"], r["epoch"]) for r in history] == ([(3, 1), (4, 1)] if schedule == "two stages"
                                                          else [(4, 1), (4, 2)])


class Recorder(T.Hook):
    """Records the events; asks to stop at global step `stop_at`; adds a key to each epoch's record."""

    def __init__(self, stop_at=None):
        self.events, self.stop_at = [], stop_at

    def on_train_start(self, run):
        self.events.append(("start", run.global_step))

    def on_step_end(self, run, stage, epoch, position):
        self.events.append(("step", epoch, position))
        if run.global_step == self.stop_at:
            run.request_stop("test")

    def on_evaluation(self, run, stage, epoch, result):
        self.events.append(("evaluation", epoch, "rank1" in result))

    def on_epoch_end(self, run, stage, epoch, record):
        self.events.append(("epoch", epoch))
        record["hook"] = epoch

    def on_checkpoint(self, run, stage, path):
        self.events.append(("checkpoint", torch.load(path, weights_only=False)["step"]))

    def on_train_end(self, run):
        self.events.append(("end", run.stop_reason))


def test_a_hook_sees_every_event_and_stops_training_where_it_asks(tiny_root, tmp_path, tmp_path_factory):
    """A hook's request_stop at a step's end (as a signal handler's hook will do): a checkpoint at that
    very position, and the resumed run ends with the weights of the uninterrupted one."""
    flags = [*SCHEDULES["one stage"], "--deterministic", "--no-eval", "--loss", "oim"]
    hook = Recorder(stop_at=3)
    stopped = T.train(T.parse_args(["--dataset", "synthetic", "--root", tiny_root, "--output", str(tmp_path), *TINY,
                                    *flags]), hooks=[hook])
    assert (stopped["stopped"], stopped["stop_reason"]) == (True, "test")
    assert hook.events == [("start", 0), ("step", 0, 1), ("step", 0, 2), ("epoch", 0), ("checkpoint", 0),
                           ("step", 1, 1), ("checkpoint", 1), ("end", "test")]
    state = final_state(tmp_path)
    assert (state["stage_index"], state["epoch"], state["step"], state["global_step"]) == (0, 1, 1, 3)
    assert [r["hook"] for r in json.load(open(tmp_path / "metrics.json"))["history"]] == [0]
    resumed = Recorder()
    T.train(T.parse_args(["--dataset", "synthetic", "--root", tiny_root, "--output", str(tmp_path), *TINY, *flags,
                          "--resume"]), hooks=[resumed])
    assert resumed.events == [("start", 3), ("step", 1, 2), ("epoch", 1), ("checkpoint", 0), ("end", None)]
    assert_same_weights(uninterrupted(tiny_root, tmp_path_factory, "one stage"), final_state(tmp_path))


def test_hooks_are_checked():
    class Misspelt(T.Hook):
        def on_step_ends(self, run, stage, epoch, position):
            pass
    with pytest.raises(ValueError, match=r"Misspelt has methods \['on_step_ends'\] that are no hook events"):
        T.check_hooks([Misspelt()])
    with pytest.raises(TypeError, match="hooks must be stafast.train.Hook instances, got function"):
        T.check_hooks([lambda run: None])


def test_resume_does_not_read_the_batches_before_its_position(tiny_root, tmp_path, monkeypatch):
    run(tiny_root, tmp_path, "--epochs", "2", "--no-eval", "--max-steps", "3")
    read = []
    original = ClipPlan.sample
    monkeypatch.setattr(ClipPlan, "sample", lambda self, epoch, pos: read.append((epoch, pos)) or
                        original(self, epoch, pos))
    run(tiny_root, tmp_path, "--epochs", "2", "--no-eval", "--resume")
    assert sorted(read) == [(1, 4), (1, 5), (1, 6), (1, 7)]  # the second batch of epoch 2 (4 clips) only


KILLER = """
import os, signal, sys
sys.path.insert(0, {repo!r})
import stafast.train as T
save = T.save_atomic

def save_then_die(obj, path):
    save(obj, path)
    if (obj["global_step"], obj["epoch"], obj["step"]) == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)

T.save_atomic = save_then_die
T.main({argv!r})
"""


@pytest.mark.parametrize("kill_at", [(2, 0, 2), (2, 1, 0)], ids=["after the step checkpoint", "after the epoch's"])
def test_sigkill_at_an_epoch_boundary_then_resume(tiny_root, tmp_path, tmp_path_factory, kill_at):
    """--checkpoint-every 2 (= the steps of an epoch): at the end of epoch 1 the step checkpoint is
    written, then the epoch's end (learning-rate step, metrics) and the epoch checkpoint.  SIGKILL
    right after either, resume, and the weights end as in the uninterrupted run."""
    argv = ["--dataset", "synthetic", "--root", tiny_root, "--output", str(tmp_path), *TINY,
            *SCHEDULES["one stage"], "--deterministic", "--no-eval", "--loss", "oim", "--checkpoint-every", "2"]
    script = KILLER.format(repo=REPO, kill_at=kill_at, argv=argv)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (final_state(tmp_path)["global_step"], final_state(tmp_path)["epoch"],
            final_state(tmp_path)["step"]) == kill_at
    run(tiny_root, tmp_path, *SCHEDULES["one stage"], "--deterministic", "--no-eval", "--loss", "oim",
        "--checkpoint-every", "2", "--resume")
    assert_same_weights(uninterrupted(tiny_root, tmp_path_factory, "one stage"), final_state(tmp_path))


def test_resume_with_another_model_is_refused(tiny_root, tmp_path):
    run(tiny_root, tmp_path, "--epochs", "1", "--no-eval", "--max-steps", "1")
    with pytest.raises(ValueError, match="--resume: the checkpoint's stage 4 model differs .*num_heads: 2 in the checkpoint, "
                                         "3 in this run"):
        run(tiny_root, tmp_path, "--epochs", "1", "--no-eval", "--resume", "--heads", "3")


# ------------------------------------------------------------------------------- the step and logs
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_root, tmp_path, capsys):
    run(tiny_root, tmp_path, "--epochs", "1", "--no-eval")
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit) as e:
        run(tiny_root, tmp_path, "--epochs", "2", "--no-eval", "--resume", "--diversity-weight", "nan",
            "--log-every", "50")
    assert e.value.code == 3
    # read at the end of epoch 2, not at each step: the message names the steps since the last read
    assert "non-finite loss (nan) in 2 of global steps 3..4 (stage 4, epoch 2" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_non_finite_loss_found_before_a_checkpoint_is_written(tiny_root, tmp_path, capsys):
    run(tiny_root, tmp_path, "--epochs", "1", "--no-eval")
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit):
        run(tiny_root, tmp_path, "--epochs", "2", "--no-eval", "--resume", "--diversity-weight", "inf",
            "--checkpoint-every", "3")
    assert "non-finite loss (inf) in 1 of global steps 3..3" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


class CreatedOn(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every op of a step that returns a tensor on the host."""

    def __init__(self):
        super().__init__()
        self.host_ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self.host_ops.append(str(func))
        return out


@pytest.mark.parametrize("loss, recipe", [("oim", "paper"), ("softmax", "paper"), ("softmax+triplet", "strong")])
def test_train_step_never_reads_the_device_nor_makes_host_tensors(loss, recipe):
    """The step on the meta device: tensors there have no values, so any host sync (.item(),
    bool(tensor), a data-dependent shape) would raise, and a tensor made on the host shows up."""
    # (Adam keeps its step count on the host off a GPU, and on the device there: stafast.optim.adam)
    cfg = TrainConfig.create("synthetic", arch="resnet18", heads=2, hidden=8, frames=3, loss=loss, recipe=recipe,
                             optimizer="sgd")
    meta = torch.device("meta")
    stage = T.build_trainable(cfg, 4, 5, meta)
    clips, pids = torch.randn(4, 3, 3, 32, 16, device=meta), torch.zeros(4, dtype=torch.long, device=meta)
    with CreatedOn() as mode:
        for _ in range(2):
            T.train_step(stage, clips, pids, 1.0, diversity_form="authors" if recipe == "strong" else "mean")
    assert mode.host_ops == []
    assert stage.meter.window.device == meta and stage.meter.window_steps == 2


@pytest.mark.parametrize("number", [1, 2, 3, 4])
def test_each_stage_trains_freezes_and_forces_what_its_table_row_says(number, monkeypatch):
    cfg = TrainConfig.create("synthetic", arch="resnet18", heads=2, hidden=8, frames=3)
    spec = STAGES[number]
    stage = T.build_trainable(cfg, number, 5, torch.device("cpu"))
    assert stage.spec is spec and stage.number == number
    for key, value in spec.forces.items():
        assert stage.model_config[key] == value and getattr(stage.model, key, value) == value, key
    frozen = {n for n, p in stage.model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in stage.model.named_parameters() if n.split(".")[0] in spec.frozen}
    assert {id(p) for g in stage.optimizer.param_groups for p in g["params"]}.isdisjoint(
        id(p) for n, p in stage.model.named_parameters() if n in frozen)
    stage.train_mode()
    assert stage.model.training and all(not m.training for name in spec.frozen
                                        for m in getattr(stage.model, name).modules())
    # the table is read in this one place: another row changes what the stage builds
    monkeypatch.setitem(STAGES, number, StageSpec("test", ("embed",), dict(temporal_pooling="max")))
    other = T.build_trainable(cfg, number, 5, torch.device("cpu"))
    assert other.model.temporal_pooling == "max" and not other.model.embed.weight.requires_grad
    assert other.model.backbone.body[0].weight.requires_grad


def test_optimizer_and_schedule_are_built_by_name(monkeypatch):
    cfg = TrainConfig.create("mars", root="/data", lr=0.5, momentum=0.8, weight_decay=1e-3, lr_step=0.25)
    assert (cfg.optimizer, cfg.schedule) == ("sgd", "step")  # the paper's
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = optim.build_optimizer(cfg, params)
    assert type(opt) is torch.optim.SGD and opt.defaults["lr"] == 0.5 and opt.defaults["momentum"] == 0.8
    sched = optim.build_schedule(cfg, opt, epochs=8)
    assert type(sched) is torch.optim.lr_scheduler.MultiStepLR and dict(sched.milestones) == {2: 1}
    made = []
    monkeypatch.setitem(optim.OPTIMIZERS, "other", lambda p, c: made.append("optimizer") or torch.optim.Adam(p, c.lr))
    monkeypatch.setitem(optim.SCHEDULES, "other", lambda o, c, e: made.append(e) or
                        torch.optim.lr_scheduler.ConstantLR(o))
    other = dataclasses.replace(cfg, optimizer="sgd")
    other.optimizer, other.schedule = "other", "other"  # (TrainConfig's choices were fixed at import)
    assert type(optim.build_schedule(other, optim.build_optimizer(other, params), 3)).__name__ == "ConstantLR"
    assert made == ["optimizer", 3]


def test_losses_are_read_every_log_every_steps(tiny_root, tmp_path, monkeypatch):
    reads = []
    original = T.LossMeter.read
    monkeypatch.setattr(T.LossMeter, "read", lambda self: reads.append(self.window_steps) or original(self))
    run(tiny_root, tmp_path, "--epochs", "3", "--no-eval", "--log-every", "3")
    # 3 epochs of 2 steps: a read at steps 3 and 6, at each epoch's end and before each checkpoint
    # (the steps in each read's window below), never one per step
    assert reads == [2, 0, 1, 1, 0, 2, 0, 0]


def test_compile_flag_trains_through_opaque_ops(tiny_root, tmp_path, monkeypatch):
    """--compile wraps the model in torch.compile; the graph it traces keeps the stafast ops as calls
    (they are not traced into).  The inductor compilation itself is too slow for a unit test on
    2 cores: the benchmark's dry-run (bench/gpu_check.sh --dry-run) runs it."""
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, backend: real_compile(model, backend=recording_backend))
    run(tiny_root, tmp_path, "--epochs", "1", "--no-eval", "--compile", "--backend", "ext")
    targets = {str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"}
    assert {"stafast.spatial_softmax_pool.default", "stafast.diversity_penalty.default",
            "stafast.frame_attention.default"} <= targets, targets
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"))["config"].compile


# ----------------------------------------------------------------------------- checkpoints, misc
def test_kill_during_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"step": 0, "weights": torch.zeros(10)}, str(path))
    writer = subprocess.Popen([sys.executable, "-c", f"""
import sys
sys.path.insert(0, {REPO!r})
import torch
from stafast.checkpoint import save_atomic
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


def test_a_checkpoint_of_an_older_format_is_refused_with_what_to_do(tmp_path):
    """(That training writes the current format and load_model reads it: the end-to-end test.)"""
    for fmt, written in ((None, "no format field"), (2, "format 2")):
        state = {"model": {}, "model_config": {}, "config": TrainConfig.create().to_dict()}
        if fmt is not None:
            state["format"] = fmt
        torch.save(state, tmp_path / "old.pt")
        with pytest.raises(ValueError, match=f"old.pt: a stafast.train checkpoint of {written}.*reads formats \\[3\\] "
                                             "only. Train it again with this version"):
            load_model(str(tmp_path / "old.pt"))


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


@pytest.mark.parametrize("cuda", [True, False])
def test_setup_distributed_binds_the_rank_to_its_gpu_first(monkeypatch, cuda):
    """With GPUs: set_device(LOCAL_RANK) before init_process_group("nccl", device_id=that GPU), so that
    each rank's communicator and its collectives run on its own GPU, not all on GPU 0."""
    calls = []
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(T.dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    monkeypatch.setattr(T.dist, "get_rank", lambda: 3)
    monkeypatch.setattr(T.dist, "get_world_size", lambda: 4)
    rank, world, device = T.setup_distributed()
    assert (rank, world) == (3, 4)
    if cuda:
        gpu = torch.device("cuda", 1)
        assert device == gpu and calls == [("set_device", gpu), ("nccl", {"device_id": gpu})]
    else:
        assert device == torch.device("cpu") and calls == [("gloo", {})]


def test_sharded_plan_splits_every_global_batch():
    tracklets = [Tracklet((f"f{i}",), i % 4, 1) for i in range(16)]
    plan = ClipPlan(tracklets, 3, "train", seed=0, ids_per_batch=2, tracklets_per_id=2)
    shards = [ShardedPlan(plan, r, 2, 4) for r in (0, 1)]
    full = plan.order(0)
    merged = [x for b in range(len(full) // 4) for s in shards for x in s.order(0)[b * 2:(b + 1) * 2]]
    assert merged == list(full)
    assert shards[1].sample(0, 0)[0] == plan.sample(0, 2)[0]


def test_help_shows_the_real_defaults_and_the_registries(capsys):
    with pytest.raises(SystemExit):
        T.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "ResNet backbone (default: resnet50; with --dataset synthetic: resnet18)" in text
    assert "(default: 1,2,3; with --dataset synthetic: 4; with --recipe strong: 4)" in text and "(default: 50)" in text
    assert "{" + ",".join(DATASET_NAMES) + "}" in text and "{auto,dali,torch}" in text
    assert "{auto,reference,triton,ext}" in text and "{" + ",".join(PROTOCOLS) + "}" in text
    assert "{oim,softmax,oim+triplet,softmax+triplet}" in text and "{sgd,adam}" in text
    assert "Precedence: an explicit flag > the recipe > --dataset synthetic's preset > the default" in text
    assert "with --recipe strong: adam" in text


def test_config_presets_and_checks():
    assert TrainConfig.create("synthetic").arch == "resnet18"
    paper = TrainConfig.create("mars", root="/data")
    assert (paper.arch, paper.stages, paper.epochs, paper.loss) == ("resnet50", (1, 2, 3), (30, 20, 20), "oim")
    assert TrainConfig.create("mars", stages=(1, 4), epochs=(5,)).epochs == (5, 5)
    assert TrainConfig.create("synthetic", arch="resnet50").arch == "resnet50"
    with pytest.raises(ValueError, match=r"TrainConfig: arch must be one of .*got 'resnet7'; stages=\(1, 5\)"):
        TrainConfig.create("synthetic", arch="resnet7", stages=(1, 5))
    with pytest.raises(ValueError, match=r"unknown training configuration fields \['colour'\]"):
        TrainConfig.from_dict({"colour": 1})
    # an ablation sets its fields; an explicit value may repeat them but not contradict them (both paths:
    # TrainConfig here, build_model in test_model)
    base = TrainConfig.create("mars", ablation="baseline", root="/data", temporal_pooling="avg")
    assert (base.spatial_pooling, base.diversity_kind, base.temporal_pooling, base.enhance) == ("avg", "none", "avg", False)
    assert TrainConfig.from_dict(base.to_dict()) == base
    with pytest.raises(ValueError, match=r"ablation 'spaatn\+q' .* diversity_kind='l2' contradicts"):
        TrainConfig.create("mars", ablation="spaatn+q", diversity_kind="l2")
    with pytest.raises(ValueError, match=r"ablation 'baseline' .* spatial_pooling='attention'.* contradicts"):
        TrainConfig(ablation="baseline")  # the bare constructor applies no row: its defaults contradict it


def test_bad_arguments(tiny_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        T.parse_args(["--stages", "1,5"])
    assert "stages=(1, 5): each must be one of (1, 2, 3, 4)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        T.parse_args(["--epochs", "1,x"])
    with pytest.raises(ValueError, match="--root is required for --dataset mars"):
        T.main(["--dataset", "mars", "--output", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="--resume: checkpoint .* does not exist"):
        run(tiny_root, tmp_path / "none", "--resume")
