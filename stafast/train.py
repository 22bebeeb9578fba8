"""Train (and evaluate) the spatiotemporal attention network.

    python -m stafast.train --dataset synthetic                     # the embedded default, CPU, minutes
    python -m stafast.train --dataset mars --root DIR --backbone-weights imagenet --output runs/mars
    torchrun --nproc_per_node 8 -m stafast.train --dataset mars --root DIR ...   # DistributedDataParallel

The paper's recipe (Sec. 4.2) is the default for the real datasets: N=6, K=6, d=256, 256x128
input, OIM, SGD with lr 0.1 then 0.01, run in stages (--stages 1,2,3; what each stage trains,
freezes and forces is the table stafast.config.STAGES, listed under --stages below), each
starting from the weights of the previous one.  Every Table 1 / Table 2 ablation is a
flag (--ablation, --heads, --diversity-kind, --temporal-pooling, ...).  --dataset synthetic (no --root)
generates a small MARS-layout set into a cache folder and trains ResNet-18 on 128x64 clips
(stage 4 only, from random weights, softmax loss) in a few minutes on 2 CPU cores.

Output folder: checkpoint.pt (every epoch and every --checkpoint-every steps, written
atomically), metrics.json (per epoch: mean train losses, and the evaluation when there is one),
TensorBoard scalars in tb/.  --resume continues exactly from any checkpoint (model, optimizer,
scheduler, loss state, data position and RNG states); the data loader starts at the saved batch
without reading the ones before it.  A step never waits for the device: the losses are summed
on the device and read every --log-every steps, at each epoch's end and before each checkpoint;
a non-finite loss found there stops training with a message naming the steps, leaving the last
good checkpoint.

From Python, train(cfg, hooks=[...]) runs the same loop with Hook objects called at each step's
end, evaluation, epoch's end and checkpoint; a hook can stop training cleanly (Run.request_stop).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import operator
import os
import random
import shlex
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from . import cli, ops
from .checkpoint import (FORMAT, CheckpointError, CheckpointNotFound, load_checkpoint, rng_state, save_atomic,
                         set_rng_state)
from .config import RECIPES, STAGES, SYNTHETIC, SYNTHETIC_RECIPES, StageSpec, TrainConfig
from .data import Augmentation, ClipPlan, ShardedPlan, build_loader, load_dataset, parse_augment
from .evaluate import evaluate_dataset
from .extras import MissingExtra, require
from .losses import Criterion, OIMLoss, build_criterion, diversity_term
from .models import STA, build_model
from .models.backbone import warn_random_init
from .optim import build_optimizer, build_schedule
from .progress import progress_bar


class NonFiniteLoss(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The CLI, one flag per TrainConfig field: its help, choices and (real) default come from the field."""
    return cli.build_parser(TrainConfig, "stafast.train", __doc__, PRESETS)


def parse_args(argv=None) -> TrainConfig:
    return cli.parse(TrainConfig, argv, module="stafast.train", description=__doc__, presets=PRESETS,
                     build=TrainConfig.create)


PRESETS = {"--dataset synthetic": SYNTHETIC, "--recipe strong": RECIPES["strong"],  # shown beside the defaults
           "--dataset synthetic --recipe strong": SYNTHETIC_RECIPES["strong"]}    # in --help


# ---------------------------------------------------------------------------------- the whole run
@dataclass
class Run:
    """What lives for the whole run: the configuration, processes, data, output, position."""
    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    dataset: object
    amp_dtype: torch.dtype | None
    ckpt_path: str
    writer: object = None
    resume: dict | None = None        # the checkpoint being resumed, until its stage is set up
    history: list = None
    global_step: int = 0
    previous_state: dict | None = None  # the last stage's weights, for the next stage
    progress: bool = False
    hooks: tuple = ()
    stop_reason: str | None = None    # set by request_stop

    @property
    def main_proc(self) -> bool:
        return self.rank == 0

    def request_stop(self, reason: str) -> None:
        """Stop training cleanly: asked at a step's end (by a hook's on_step_end, or a signal handler
        during the step), training stops after that step with a checkpoint at exactly that position
        (resuming continues from there, bit-exact); asked during an evaluation, an epoch's end or a
        checkpoint, it stops after that epoch's checkpoint.  train() then returns stopped=True and
        `reason` as stop_reason.  The first request counts.  Under DDP every process must ask at the
        same step (as with a signal that each receives), or the others wait for it forever."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def emit(self, event: str, *args) -> None:
        """Call each hook's `event` method (one of Hook's) with (self, *args), in order."""
        for hook in self.hooks:
            getattr(hook, event)(self, *args)


class Hook:
    """Extends the training loop without editing it: subclass, override the methods you need and
    pass instances as train(cfg, hooks=[...]); they are called in that order, with `run` (the Run:
    cfg, rank, global_step, history, writer...; run.request_stop(reason) stops training cleanly)
    and `stage` (the Stage being trained: model, criterion, optimizer, scheduler, meter...).
    on_step_end runs after every step on every process: reading a device value there (.item(),
    printing a loss) would make each step wait for the device; the losses are read for you into
    each epoch's record (on_epoch_end)."""

    def on_train_start(self, run: Run) -> None:
        """Before the first stage is built (after the checkpoint to resume, if any, is read)."""

    def on_step_end(self, run: Run, stage: "Stage", epoch: int, position: int) -> None:
        """After a step: `position` batches of epoch `epoch` (0-based) are done; run.global_step counts all."""

    def on_evaluation(self, run: Run, stage: "Stage", epoch: int, result: dict) -> None:
        """After an evaluation (main process): `result` holds rank1, rank5, mAP, ..."""

    def on_epoch_end(self, run: Run, stage: "Stage", epoch: int, record: dict) -> None:
        """At an epoch's end, before metrics.json and the checkpoint are written: `record` is the epoch's
        entry (mean train_<term> losses, lr, the evaluation if there was one); keys added to it are written."""

    def on_checkpoint(self, run: Run, stage: "Stage", path: str) -> None:
        """After a checkpoint was written to `path` (main process)."""

    def on_train_end(self, run: Run) -> None:
        """When training ends: finished, stopped (run.stop_reason), or by an exception."""


HOOK_EVENTS = tuple(name for name in vars(Hook) if name.startswith("on_"))


def check_hooks(hooks) -> tuple:
    """`hooks` as a tuple, each a Hook whose on_* methods are all Hook's (a misspelt one would never run)."""
    for hook in hooks:
        if not isinstance(hook, Hook):
            raise TypeError(f"train: hooks must be stafast.train.Hook instances, got {type(hook).__name__}")
        unknown = sorted(n for n in dir(hook) if n.startswith("on_") and n not in HOOK_EVENTS)
        if unknown:
            raise ValueError(f"train: {type(hook).__name__} has methods {unknown} that are no hook events; the "
                             f"events are {HOOK_EVENTS}")
    return tuple(hooks)


def setup_distributed() -> tuple[int, int, torch.device]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if torch.cuda.is_available():
            # the rank's GPU first, and bound to NCCL: else every rank's communicator starts on GPU 0
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            device = torch.device("cpu")
            dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size(), device
    return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def start_run(cfg: TrainConfig, hooks: tuple = ()) -> Run:
    rank, world, device = setup_distributed()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    os.makedirs(cfg.output, exist_ok=True)
    ckpt_path = os.path.join(cfg.output, "checkpoint.pt")
    resume = None
    if cfg.resume:
        path = ckpt_path if cfg.resume == "auto" else cfg.resume
        if not os.path.isfile(path):
            raise CheckpointNotFound(f"--resume: checkpoint {path} does not exist")
        resume = load_checkpoint(path)
        check_resume(resume, model_config(cfg, resume["stage"]), cfg, path)
    dataset = load_dataset(cfg.dataset, cfg.root, cfg.split, cfg.protocol)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp) if device.type == "cuda" else None
    run = Run(cfg, rank, world, device, dataset, amp_dtype, ckpt_path, resume=resume,
              history=list(resume["metrics"]) if resume else [], global_step=resume["global_step"] if resume else 0,
              progress=cfg.progress is not False and rank == 0, hooks=hooks)
    if run.main_proc:
        print(dataset.summary(), file=sys.stderr)
        if not cfg.backbone_weights and cfg.dataset != "synthetic":
            warn_random_init(cfg.arch)
        # purge_step: a resumed run drops the events an interrupted one wrote after its checkpoint
        run.writer = open_writer(os.path.join(cfg.output, "tb"), run.global_step if resume else None)
    return run


# settings that may change on --resume without changing the steps (output, stopping, logging, evaluation)
OPERATIONAL = ("output", "resume", "max_steps", "workers", "eval_every", "no_eval", "rerank", "log_every",
               "checkpoint_every", "progress")


def differences(checkpoint: dict, here: dict) -> str:
    """"heads: 6 in the checkpoint, 4 in this run; ...": the keys whose values differ."""
    keys = [k for k in dict.fromkeys([*checkpoint, *here]) if checkpoint.get(k) != here.get(k)]
    return "; ".join(f"{k}: {checkpoint.get(k)!r} in the checkpoint, {here.get(k)!r} in this run" for k in keys)


def setting_changes(checkpoint: TrainConfig, here: TrainConfig) -> str:
    """The settings (but OPERATIONAL) in which a resumed run differs from the checkpoint's run."""
    a, b = checkpoint.to_dict(), here.to_dict()
    return differences({k: v for k, v in a.items() if k not in OPERATIONAL},
                       {k: v for k, v in b.items() if k not in OPERATIONAL})


def check_resume(checkpoint: dict, built: dict, cfg: TrainConfig, path: str | None = None) -> None:
    """Refuse a checkpoint whose model differs from the one `cfg` builds (`built`), naming the fields
    that differ with both values; with `path`, warn about the other settings that differ."""
    changed = setting_changes(checkpoint["config"], cfg)
    if checkpoint["model_config"] != built:
        raise CheckpointError(f"--resume: the checkpoint's stage {checkpoint['stage']} model differs from the one this "
                              f"configuration builds ({differences(checkpoint['model_config'], built)}; the settings: "
                              f"{changed}): resume with the checkpoint's settings, or train into another --output")
    if changed and path:
        warnings.warn(f"--resume: {path} was written with other settings ({changed}); training goes on with this "
                      "run's, so it does not continue the checkpoint's run exactly", UserWarning, stacklevel=2)


def open_writer(folder: str, purge_step: int | None):
    """A TensorBoard writer into `folder`; without tensorboard, None and a warning naming its extra."""
    try:
        require("tensorboard", "tensorboard", "writing TensorBoard scalars")
    except MissingExtra as e:
        warnings.warn(f"{e}; training goes on, metrics.json is still written", UserWarning, stacklevel=2)
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(folder, purge_step=purge_step)


def train(cfg: TrainConfig, hooks=()) -> dict:
    """Run the stages of `cfg` (resuming from cfg.resume), calling `hooks` (Hook instances) along the
    way; returns {"metrics", "stopped", "stop_reason", "oim_table"}."""
    run = start_run(cfg, check_hooks(hooks))
    try:
        run.emit("on_train_start")
        stage = run_stages(run)
    finally:
        run.emit("on_train_end")
    return finish(run, stage)


def run_stages(run: Run) -> "Stage | None":
    """Every stage from the one to resume (or the first), until the last ends or training stops;
    returns the last stage set up."""
    stage = None
    with ops.backend(run.cfg.backend):
        for si in range(run.resume["stage_index"] if run.resume else 0, len(run.cfg.stages)):
            stage = setup_stage(run, si)
            for epoch in range(stage.start_epoch, stage.epochs):
                if not run_epoch(run, stage, epoch):
                    return stage
            run.previous_state = {k: v.detach().cpu() for k, v in stage.model.state_dict().items()}
    return stage


def finish(run: Run, stage: "Stage | None") -> dict:
    if run.writer:
        run.writer.close()
    if run.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    oim = [m for m in stage.criterion.modules() if isinstance(m, OIMLoss)] if stage else []
    table = oim[0].lut.detach().cpu().clone() if oim else None
    return {"metrics": run.history, "stopped": run.stop_reason is not None, "stop_reason": run.stop_reason,
            "oim_table": table}


# ------------------------------------------------------------------------------------ one stage
@dataclass
class Stage:
    """One stage of the schedule: the model it trains and everything that steps with it."""
    index: int                 # position in cfg.stages
    number: int                # a key of stafast.config.STAGES
    epochs: int
    spec: StageSpec            # STAGES[number]: what it trains, freezes and forces
    model: STA
    net: torch.nn.Module       # what the step calls: the model, DDP-wrapped and/or compiled
    model_config: dict
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    meter: "LossMeter"
    loader: object = None
    start_epoch: int = 0
    start_step: int = 0        # batches of start_epoch already done (resume)

    def train_mode(self) -> None:
        """Training mode, the frozen parts in eval mode (their BatchNorm statistics stay as they are)."""
        self.model.train()
        for module in frozen_parts(self.model, self.spec):
            module.eval()


def frozen_parts(model: STA, spec: StageSpec) -> list[torch.nn.Module]:
    """The parts of `model` that a stage does not train (spec.frozen; those the model has)."""
    return [m for m in (getattr(model, name) for name in spec.frozen) if m is not None]


def model_config(cfg: TrainConfig, stage: int) -> dict:
    """STA constructor arguments for `stage`: the configuration's, with the settings STAGES[stage] forces."""
    mc = dict(arch=cfg.arch, last_stride=cfg.last_stride, num_frames=cfg.frames, num_heads=cfg.heads,
              hidden=cfg.hidden, spatial_pooling=cfg.spatial_pooling, diversity_kind=cfg.diversity_kind,
              enhance=cfg.enhance, enhance_scale=cfg.enhance_scale, temporal_pooling=cfg.temporal_pooling,
              embed_dim=cfg.embed_dim)
    return {**mc, **STAGES[stage].forces}


def transfer(model, previous_state: dict) -> int:
    """Copy the previous stage's weights that fit (same name and shape)."""
    own = model.state_dict()
    fits = {k: v for k, v in previous_state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fits, strict=False)
    return len(fits)


def build_trainable(cfg: TrainConfig, stage: int, num_classes: int, device: torch.device, world: int = 1,
                    backbone_weights: str | None = None, previous_state: dict | None = None, epochs: int = 1,
                    compile_backend: str = "inductor", index: int = 0) -> Stage:
    """Stage number `stage` (at position `index` of cfg.stages, `epochs` long), as STAGES[stage]
    says: its model (from `previous_state`'s weights that fit), the frozen parts without gradients,
    the criterion, optimizer and schedule by name (stafast.losses, stafast.optim).  On a GPU the
    model is channels_last; `net` is the model wrapped for DDP and/or torch.compile (with
    `compile_backend`, which only the benchmark's CPU dry-run changes)."""
    spec = STAGES[stage]
    mc = model_config(cfg, stage)
    model = build_model(backbone_weights=backbone_weights, **mc)
    if previous_state is not None:
        transfer(model, previous_state)
    for module in frozen_parts(model, spec):  # before DDP, which syncs the gradients of what requires them
        module.requires_grad_(False)
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    criterion = build_criterion(cfg, num_classes).to(device)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if cfg.compile:
        net = torch.compile(net, backend=compile_backend)
    params = [p for p in list(model.parameters()) + list(criterion.parameters()) if p.requires_grad]
    optimizer = build_optimizer(cfg, params)
    return Stage(index, stage, epochs, spec, model, net, mc, criterion, optimizer,
                 build_schedule(cfg, optimizer, epochs), LossMeter(loss_names(criterion), device))


def setup_stage(run: Run, si: int) -> Stage:
    """Build stage `si` (from the previous stage's weights, or from the checkpoint being resumed),
    and its loader set to the position to continue from."""
    cfg, resume = run.cfg, run.resume
    number, epochs = cfg.stages[si], cfg.epochs[si]
    weights = cfg.backbone_weights if si == 0 and resume is None else None
    stage = build_trainable(cfg, number, run.dataset.num_train_pids, run.device, run.world, weights,
                            run.previous_state, epochs, index=si)
    if resume is not None:
        check_resume(resume, stage.model_config, cfg)
        for part in ("model", "criterion", "optimizer", "scheduler"):
            getattr(stage, part).load_state_dict(resume[part])
        stage.start_epoch, stage.start_step = resume["epoch"], resume["step"]
        stage.meter.restore(resume["epoch_losses"])
        set_rng_state(resume["rng"])  # last: building the stage above drew from the generators
        run.resume = None
    if stage.start_epoch < epochs:
        plan = ClipPlan(run.dataset.train, cfg.frames, "train", seed=cfg.seed + 1000 * si,
                        augment=Augmentation(parse_augment(cfg.augment), cfg.height, cfg.width),
                        ids_per_batch=cfg.ids_per_batch, tracklets_per_id=cfg.tracklets_per_id)
        shard = ShardedPlan(plan, run.rank, run.world, cfg.batch_size) if run.world > 1 else plan
        stage.loader = build_loader(shard, cfg.batch_size // run.world, cfg.height, cfg.width, pipeline=cfg.pipeline,
                                    workers=cfg.workers, device=str(run.device), start_epoch=stage.start_epoch,
                                    start=stage.start_step)
    return stage


# ----------------------------------------------------------------------------- epochs and steps
def loss_names(criterion: Criterion) -> tuple[str, ...]:
    """What a step records, in this order: the total, the criterion's terms, the weighted Q term."""
    return ("loss", *criterion.terms, "diversity")


class LossMeter:
    """Sums of the named losses of each step (loss_names), kept on the device so that a step never
    waits for it: `add` per step, `read` (one host sync) every --log-every steps, at the end of an
    epoch and before a checkpoint."""

    def __init__(self, names: tuple[str, ...], device: torch.device):
        self.names = tuple(names)
        self.window = torch.zeros(len(self.names) + 1, device=device)  # sums, then the count of non-finite steps
        self.window_steps = 0
        self.window_start = time.perf_counter()
        self.new_epoch()

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        values = torch.stack([losses[k].detach().float() for k in self.names])
        self.window += torch.cat([values, (~torch.isfinite(values[:1])).float()])  # the total's finiteness
        self.window_steps += 1

    def read(self) -> tuple[dict, int, float]:
        """(mean of each loss over the window, non-finite steps in it, seconds since the last read);
        the window's sums go to the epoch's."""
        values = self.window.tolist()
        seconds = time.perf_counter() - self.window_start
        steps = max(1, self.window_steps)
        means = {k: v / steps for k, v in zip(self.names, values)}
        for k, v in zip(self.names, values):
            self.epoch_sums[k] += v
        self.epoch_steps += self.window_steps
        self.window.zero_()
        self.window_steps, self.window_start = 0, time.perf_counter()
        return means, int(values[-1]), seconds

    def epoch_means(self) -> dict:
        return {k: v / max(1, self.epoch_steps) for k, v in self.epoch_sums.items()}

    def state(self) -> dict:
        return {"sums": dict(self.epoch_sums), "steps": self.epoch_steps}

    def restore(self, state: dict) -> None:
        if tuple(state["sums"]) != self.names:
            raise ValueError(f"--resume: the checkpoint's losses {tuple(state['sums'])} are not this run's {self.names}")
        self.epoch_sums, self.epoch_steps = dict(state["sums"]), state["steps"]

    def new_epoch(self) -> None:
        self.epoch_sums, self.epoch_steps = dict.fromkeys(self.names, 0.0), 0


def gather_for_loss(out, fields: tuple[str, ...], pids: torch.Tensor, world: int):
    """The global batch on every rank (gradients flow back to each rank's own part): the output
    `fields` the criterion reads, and the pids.  So the OIM table receives the same update
    everywhere and stays identical across ranks (and the softmax loss's batch normalisation sees
    the global batch)."""
    if world == 1:
        return out, pids
    import torch.distributed.nn.functional as dnn
    all_pids = [torch.empty_like(pids) for _ in range(world)]
    dist.all_gather(all_pids, pids)
    gathered = {f: torch.cat(dnn.all_gather(getattr(out, f))) for f in fields}
    return dataclasses.replace(out, **gathered), torch.cat(all_pids)


def train_step(stage: Stage, clips: torch.Tensor, pids: torch.Tensor, diversity_weight: float,
               amp_dtype: torch.dtype | None = None, world: int = 1, diversity_form: str = "mean") -> None:
    """One optimizer step on a batch already on the device: the criterion's terms plus
    diversity_weight * Q (in `diversity_form`, stafast.losses.diversity), summed.  No host sync, no
    tensor made on the host and no branch on a device value: on a GPU it runs ahead of the device
    and can be captured."""
    with torch.autocast(clips.device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
        out = stage.net(clips)
    terms = stage.criterion(*gather_for_loss(out, stage.criterion.takes, pids, world))
    terms["diversity"] = diversity_weight * diversity_term(out.diversity_loss, clips.shape[0] * clips.shape[1],
                                                          diversity_form)
    loss = functools.reduce(operator.add, terms.values())
    stage.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    stage.optimizer.step()
    stage.meter.add({"loss": loss, **terms})


def run_epoch(run: Run, stage: Stage, epoch: int) -> bool:
    """Epoch `epoch` of `stage` from its start position; False when training stops (--max-steps, or
    a request_stop), with a checkpoint at the position reached."""
    cfg = run.cfg
    start = stage.start_step if epoch == stage.start_epoch else 0
    if start == 0:
        stage.meter.new_epoch()
    stage.loader.set_epoch(epoch, start)
    stage.train_mode()
    bar = progress_bar(total=len(stage.loader), initial=start, enabled=run.progress,
                       desc=f"stage {stage.number} epoch {epoch + 1}/{stage.epochs}")
    if steps_done(run) and start < len(stage.loader):
        run.request_stop("--max-steps")  # a resumed run that has already taken its steps
        save_checkpoint(run, stage, epoch, start)
        return False
    t0, clips_seen = time.perf_counter(), 0
    for position, batch in enumerate(stage.loader, start + 1):
        clips = batch["clips"].to(run.device, non_blocking=True)
        pids = batch["pids"].to(run.device, non_blocking=True)
        train_step(stage, clips, pids, cfg.diversity_weight, run.amp_dtype, run.world, cfg.diversity_form)
        run.global_step += 1
        clips_seen += clips.shape[0] * run.world
        bar.update(1)
        if run.global_step % cfg.log_every == 0:
            log(run, stage, epoch, bar)
        if cfg.checkpoint_every and run.global_step % cfg.checkpoint_every == 0:
            save_checkpoint(run, stage, epoch, position)
        run.emit("on_step_end", stage, epoch, position)
        if steps_done(run) and position < len(stage.loader):
            run.request_stop("--max-steps")
        if run.stop_reason is not None:
            save_checkpoint(run, stage, epoch, position)
            bar.close()
            return False
    bar.close()
    # an epoch whose last step is the run's last (--max-steps) still ends: its record in
    # metrics.json, its evaluation when due, and a checkpoint at the next epoch's start
    end_epoch(run, stage, epoch, clips_seen / (time.perf_counter() - t0) if clips_seen else None)
    if steps_done(run):
        run.request_stop("--max-steps")
    return run.stop_reason is None


def steps_done(run: Run) -> bool:
    """Whether --max-steps is reached."""
    return bool(run.cfg.max_steps) and run.global_step >= run.cfg.max_steps


def log(run: Run, stage: Stage, epoch: int, bar=None) -> None:
    """Read the step losses (one host sync): stop on a non-finite one, else report them."""
    steps = stage.meter.window_steps
    means, bad, seconds = stage.meter.read()
    if bad:
        first = run.global_step - steps + 1
        raise NonFiniteLoss(f"non-finite loss ({means['loss']}) in {bad} of global steps {first}..{run.global_step} "
                            f"(stage {stage.number}, epoch {epoch + 1}; {terms_text(means)}); the last good "
                            f"checkpoint is {run.ckpt_path}")
    if not steps:
        return
    lr = stage.optimizer.param_groups[0]["lr"]
    rate = steps * run.cfg.batch_size / max(seconds, 1e-9)
    if bar is not None:
        bar.set_postfix({k: f"{v:.3f}" for k, v in means.items()} | {"lr": f"{lr:.3g}", "clips_s": f"{rate:.1f}"})
    if run.writer:
        for k, v in means.items():
            run.writer.add_scalar("loss/total" if k == "loss" else f"loss/{k}", v, run.global_step)
        run.writer.add_scalar("lr", lr, run.global_step)
        run.writer.add_scalar("clips_per_s", rate, run.global_step)


def terms_text(losses: dict, spec: str = "") -> str:
    """"id 0.5, diversity 0.1": the terms of a loss record, without the total."""
    return ", ".join(f"{k} {v:{spec}}" for k, v in losses.items() if k != "loss")


def end_epoch(run: Run, stage: Stage, epoch: int, rate: float | None) -> None:
    """Epoch summary, learning-rate step, evaluation when due, metrics.json and the checkpoint.
    `rate`: clips/s of this process's steps in the epoch (None when it resumed at the epoch's end)."""
    cfg = run.cfg
    log(run, stage, epoch)
    losses = stage.meter.epoch_means()
    lr = stage.optimizer.param_groups[0]["lr"]
    with warnings.catch_warnings():  # a run resumed at an epoch's last step has no optimizer.step() before this
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler.step\(\)` before", UserWarning)
        stage.scheduler.step()
    record = {"dataset": cfg.dataset, "split": cfg.split, "stage": stage.number, "epoch": epoch + 1,
              "global_step": run.global_step, "lr": lr, "clips_per_s": rate,
              **{f"train_{k}": v for k, v in losses.items()}}
    if run.main_proc:
        speed = f", {rate:.1f} clips/s" if rate is not None else ""
        print(f"stage {stage.number} epoch {epoch + 1}/{stage.epochs}: loss {losses['loss']:.4f} "
              f"({terms_text(losses, '.4f')}){speed}", file=sys.stderr)
    last = epoch + 1 == stage.epochs
    if not cfg.no_eval and ((cfg.eval_every and (epoch + 1) % cfg.eval_every == 0) or last):
        if run.main_proc:
            result = evaluate_dataset(stage.model, run.dataset, cfg.frames, cfg.height, cfg.width, cfg.protocol,
                                      pipeline=cfg.pipeline, workers=cfg.workers, device=str(run.device),
                                      amp_dtype=run.amp_dtype, progress=run.progress, batch_size=cfg.batch_size,
                                      rerank=cfg.rerank)
            record.update(result)
            run.emit("on_evaluation", stage, epoch, result)
            if run.writer:
                for k in ("rank1", "rank5", "mAP"):
                    run.writer.add_scalar(f"eval/{k}", result[k], run.global_step)
            print(f"  eval ({cfg.protocol}): rank-1 {result['rank1']:.3f} mAP {result['mAP']:.3f} "
                  f"(chance rank-1 {result['chance_rank1']:.3f})", file=sys.stderr)
            if cfg.rerank:
                print(f"  re-ranked: rank-1 {result['rerank_rank1']:.3f} mAP {result['rerank_mAP']:.3f}",
                      file=sys.stderr)
    run.emit("on_epoch_end", stage, epoch, record)
    if run.main_proc:
        run.history.append(record)
        write_metrics(cfg.output, run.history)
    stage.meter.new_epoch()
    save_checkpoint(run, stage, epoch + 1, 0)


def save_checkpoint(run: Run, stage: Stage, epoch: int, step: int) -> None:
    """The run's state after `step` batches of epoch `epoch` (step 0: `epoch` epochs done).  The losses
    are read first, so a checkpoint is never written after a non-finite one."""
    log(run, stage, epoch)
    if not run.main_proc:
        return
    save_atomic({"format": FORMAT, "config": run.cfg.to_dict(), "model_config": stage.model_config, "model": stage.model.state_dict(),
                 "criterion": stage.criterion.state_dict(), "optimizer": stage.optimizer.state_dict(),
                 "scheduler": stage.scheduler.state_dict(), "stage_index": stage.index, "stage": stage.number,
                 "epoch": epoch, "step": step, "global_step": run.global_step, "epoch_losses": stage.meter.state(),
                 "rng": rng_state(), "metrics": run.history}, run.ckpt_path)
    run.emit("on_checkpoint", stage, run.ckpt_path)


def write_metrics(output: str, history: list) -> None:
    save = {"latest": history[-1], "history": history}
    tmp = os.path.join(output, ".metrics.json.tmp")
    with open(tmp, "w") as f:
        json.dump(save, f, indent=2)
    os.replace(tmp, os.path.join(output, "metrics.json"))


class StopOnSignal(Hook):
    """SIGINT (Ctrl-C) and SIGTERM (a cluster's preemption notice) stop training as run.request_stop
    does: the step under way ends and a checkpoint is written at that position (asked during an
    evaluation: after that epoch's checkpoint).  A second signal ends the process at once, by the
    signal's default action.  Installed in a single process, from the main thread (under DDP each
    rank would stop at the step where its signal arrives and wait for the others forever)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal, self.where, self.previous, self.run = None, None, {}, None

    def on_train_start(self, run: Run) -> None:
        if run.world == 1 and threading.current_thread() is threading.main_thread():
            self.run = run
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}

    def handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signal = signum
        self.run.request_stop(name)
        # os.write: a signal may arrive while stderr's buffer is being written, which print would re-enter
        os.write(2, f"stafast.train: {name}: stopping after the current step, with a checkpoint ({name} again "
                    "stops at once)\n".encode())

    def on_step_end(self, run: Run, stage: "Stage", epoch: int, position: int) -> None:
        self.where = (stage.number, epoch, position, len(stage.loader))

    def on_epoch_end(self, run: Run, stage: "Stage", epoch: int, record: dict) -> None:
        self.where = (stage.number, epoch, None, None)

    def on_train_end(self, run: Run) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def report(self, argv: list[str]) -> str:
        """Where training stopped, its checkpoint and the command that resumes it: one line."""
        run, name = self.run, signal.Signals(self.signal).name
        number, epoch, position, total = self.where or (run.cfg.stages[0], 0, 0, None)
        at = f"the end of epoch {epoch + 1}" if total is None else f"epoch {epoch + 1}, batch {position} of {total}"
        return (f"stafast.train: stopped by {name} after global step {run.global_step} (stage {number}, {at}); "
                f"checkpoint {run.ckpt_path}; resume with: {resume_command(argv, run.ckpt_path)}")


def resume_command(argv: list[str], checkpoint: str) -> str:
    """The command line that continues the run of `argv` from `checkpoint`: argv without its
    --resume (and --resume's value), then --resume CHECKPOINT."""
    kept, skip = [], False
    for i, arg in enumerate(argv):
        if skip or arg.startswith("--resume="):
            skip = False
            continue
        if arg == "--resume":
            skip = i + 1 < len(argv) and not argv[i + 1].startswith("-")
            continue
        kept.append(arg)
    return shlex.join(["python", "-m", "stafast.train", *kept, "--resume", checkpoint])


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = parse_args(argv)
    stop = StopOnSignal()
    try:
        result = train(cfg, hooks=[stop])
    except NonFiniteLoss as e:
        print(f"stafast.train: {e}", file=sys.stderr)
        raise SystemExit(3) from None
    if stop.signal is not None:
        print(stop.report(argv), file=sys.stderr)
        raise SystemExit(128 + stop.signal)
    return result


if __name__ == "__main__":
    cli.run(main, "stafast.train")
