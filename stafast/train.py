"""Train (and evaluate) the spatiotemporal attention network.

    python -m stafast.train --dataset synthetic                     # the embedded default, CPU, minutes
    python -m stafast.train --dataset mars --root DIR --backbone-weights resnet50.pth --output runs/mars
    torchrun --nproc_per_node 8 -m stafast.train --dataset mars --root DIR ...   # DistributedDataParallel

The paper's recipe (Sec. 4.2) is the default for the real datasets: N=6, K=6, d=256, 256x128
input, OIM, SGD with lr 0.1 then 0.01, run in stages (--stages):
  1  the CNN fine-tuned alone (Table 1's Baseline: average pooled frames, OIM)
  2  CNN frozen, spatial attention + diversity with average temporal pooling
  3  CNN frozen, everything else trained jointly (temporal attention, enhancement)
  4  the whole network fine-tuned ("Ind" in Table 1)
Each stage starts from the weights of the previous one.  Every Table 1 / Table 2 ablation is a
flag (--ablation, --heads, --diversity, --temporal, ...).  --dataset synthetic (no --root)
generates a small MARS-layout set into a cache folder and trains ResNet-18 on 128x64 clips
(stage 4 only, from random weights) in a few minutes on 2 CPU cores.

Output folder: checkpoint.pt (every epoch and every --checkpoint-every steps, written
atomically), metrics.json, TensorBoard scalars in tb/.  --resume continues exactly (model,
optimizer, scheduler, OIM table, data order and RNG states).  A non-finite loss stops training
with a message, leaving the last good checkpoint.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from . import ops
from .data import DATASETS, MARS, ClipPlan, build_loader, synth
from .evaluate import evaluate_dataset
from .losses import OIMLoss, SoftmaxLoss
from .models import ABLATIONS, build_model
from .models.backbone import warn_random_init

# Synthetic: ResNet-18 from random weights learns far faster with a classifier (softmax) than with
# OIM, whose table starts at zero and whose gradient vanishes while a random CNN maps every clip to
# nearly the same feature (15 epochs: rank-1 0.70 with softmax, 0.27 with OIM; chance 0.03).
SYNTHETIC_DEFAULTS = dict(arch="resnet18", height=128, width=64, stages="4", epochs="15", lr=0.01, lr_step=0.75,
                          ids_per_batch=4, tracklets_per_id=2, eval_every=0, loss="softmax")
PAPER_DEFAULTS = dict(arch="resnet50", height=256, width=128, stages="1,2,3", epochs="30,20,20", lr=0.1, lr_step=0.5,
                      ids_per_batch=8, tracklets_per_id=4, eval_every=0, loss="oim")


# ------------------------------------------------------------------------------------- datasets
def synthetic_root(root: str | None, seed: int = 0) -> str:
    """The synthetic MARS-layout set: `root` if given and present, else generated once into a cache."""
    if root and os.path.isdir(os.path.join(root, "info")):
        return root
    root = root or os.path.join(os.environ.get("STAFAST_CACHE", os.path.expanduser("~/.cache/stafast")),
                                f"synthetic-mars-s{seed}")
    if not os.path.isdir(os.path.join(root, "info")):
        os.makedirs(os.path.dirname(os.path.abspath(root)), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(root)), prefix=".synth-")
        synth.make_mars(tmp, ids=24, test_ids=24, cameras=3, tracklets=2, frames=(8, 16), size=(128, 64), seed=seed)
        try:
            os.rename(tmp, root)  # atomic: a concurrent or killed generation never leaves half a tree
        except OSError:
            if not os.path.isdir(os.path.join(root, "info")):
                raise
    return root


def load_dataset(name: str, root: str | None, split: int = 0, protocol: str = "official"):
    if name == "synthetic":
        return MARS(synthetic_root(root), protocol)
    if not root:
        raise ValueError(f"--root is required for --dataset {name} (the folder holding its published layout)")
    if name == "mars":
        return MARS(root, protocol)
    return DATASETS[name](root, split)


class ShardedPlan:
    """One rank's share of every global batch of a ClipPlan, keeping the global positions (so the
    frames and flips are those a single process would draw)."""

    def __init__(self, plan: ClipPlan, rank: int, world: int, batch: int):
        if batch % world:
            raise ValueError(f"the global batch ({batch} clips) must divide among {world} processes")
        self.plan, self.rank, self.world, self.batch = plan, rank, world, batch
        self.n, self.mode, self.seed, self.tracklets = plan.n, plan.mode, plan.seed, plan.tracklets
        self.local = batch // world

    def _global(self, position: int) -> int:
        b, i = divmod(position, self.local)
        return b * self.batch + self.rank * self.local + i

    def order(self, epoch: int) -> np.ndarray:
        full = self.plan.order(epoch)
        usable = len(full) // self.batch * self.batch
        return full[[self._global(p) for p in range(usable // self.world)]]

    def __len__(self) -> int:
        return len(self.order(0))

    def sample(self, epoch: int, position: int):
        return self.plan.sample(epoch, self._global(position))


# ---------------------------------------------------------------------------------- model, stages
def model_config(a, stage: int) -> dict:
    cfg = dict(arch=a.arch, last_stride=a.last_stride, num_frames=a.frames, num_heads=a.heads, hidden=a.hidden,
               diversity=a.diversity, enhance=not a.no_enhance, enhance_scale=a.enhance_scale, temporal=a.temporal,
               spatial="attention", embed_dim=a.embed_dim)
    if a.ablation:
        cfg.update(ABLATIONS[a.ablation])
    if stage == 1:
        cfg.update(ABLATIONS["baseline"])
    elif stage == 2:
        cfg.update(temporal="avg")
    return cfg


def transfer(model, previous_state: dict) -> int:
    """Copy the previous stage's weights that fit (same name and shape)."""
    own = model.state_dict()
    fits = {k: v for k, v in previous_state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fits, strict=False)
    return len(fits)


# ------------------------------------------------------------------------------------ checkpoints
def save_atomic(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`: a crash
    (even kill -9) mid-write leaves the previous checkpoint intact."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ckpt-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


class NonFiniteLoss(RuntimeError):
    pass


# --------------------------------------------------------------------------------------- training
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic", choices=["mars", "ilidsvid", "prid2011", "synthetic"])
    p.add_argument("--root", help="dataset root in its published layout (synthetic: optional cache folder)")
    p.add_argument("--split", type=int, default=0, help="iLIDS-VID / PRID2011 split 0..9")
    p.add_argument("--output", default="runs/stafast")
    p.add_argument("--protocol", default="official", choices=["official", "toolbox"], help="MARS evaluation protocol")
    g = p.add_argument_group("model (Sec. 3; Table 1 and Table 2 ablations)")
    g.add_argument("--arch", help="resnet18|34|50|101 (paper: resnet50; synthetic default: resnet18)")
    g.add_argument("--backbone-weights", help="torchvision ResNet state dict (.pth), a local file")
    g.add_argument("--last-stride", type=int, default=2, choices=[1, 2])
    g.add_argument("--frames", type=int, default=6, help="N frames per clip")
    g.add_argument("--heads", type=int, default=6, help="K spatial attention models")
    g.add_argument("--hidden", type=int, default=256, help="d of Eq. 1")
    g.add_argument("--embed-dim", type=int, default=128)
    g.add_argument("--ablation", choices=sorted(ABLATIONS), help="a Table 1 row (overrides the flags below)")
    g.add_argument("--diversity", default="hellinger", choices=["hellinger", "l2", "none"])
    g.add_argument("--diversity-weight", type=float, default=1.0, help="coefficient of Q in the loss")
    g.add_argument("--temporal", default="attention", choices=["attention", "avg", "max"])
    g.add_argument("--no-enhance", action="store_true", help="drop the frame enhancement E of Eq. 4")
    g.add_argument("--enhance-scale", default="sqrt", choices=["sqrt", "none"])
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    o = p.add_argument_group("optimisation (Sec. 4.2)")
    o.add_argument("--stages", help="comma-separated stages to run, in order (1 CNN, 2 attention + avg pooling, "
                                    "3 all but CNN, 4 whole network)")
    o.add_argument("--epochs", help="epochs per stage (one value, or one per stage)")
    o.add_argument("--loss", choices=["oim", "softmax"], help="paper: oim (synthetic default: softmax)")
    o.add_argument("--oim-scalar", type=float, default=30.0)
    o.add_argument("--oim-momentum", type=float, default=0.5)
    o.add_argument("--lr", type=float, help="initial lr (paper 0.1); x0.1 after --lr-step of each stage's epochs")
    o.add_argument("--lr-step", type=float)
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--weight-decay", type=float, default=5e-4)
    o.add_argument("--ids-per-batch", type=int, help="P ids per batch")
    o.add_argument("--tracklets-per-id", type=int, help="Q tracklets per id (batch = P x Q clips)")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--deterministic", action="store_true", help="deterministic algorithms (for exact resume)")
    r = p.add_argument_group("running")
    r.add_argument("--backend", default="auto", choices=["auto"] + list(ops.BACKENDS), help="stafast.ops backend")
    r.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"], help="autocast dtype on GPU")
    r.add_argument("--pipeline", default="auto", choices=["auto", "dali", "torch"])
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--eval-every", type=int, help="evaluate every E epochs (0: at the end of each stage)")
    r.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every M steps")
    r.add_argument("--max-steps", type=int, default=0, help="stop (with a checkpoint) after this many steps")
    r.add_argument("--resume", nargs="?", const="auto", help="checkpoint to resume (default OUTPUT/checkpoint.pt)")
    r.add_argument("--no-eval", action="store_true")
    r.add_argument("--rerank", action="store_true", help="evaluations also report re-ranked CMC/mAP (rerank_*)")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty())
    a = p.parse_args(argv)
    defaults = SYNTHETIC_DEFAULTS if a.dataset == "synthetic" else PAPER_DEFAULTS
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.stages = [int(s) for s in str(a.stages).split(",")]
    epochs = [int(e) for e in str(a.epochs).split(",")]
    if len(epochs) not in (1, len(a.stages)) or any(s not in (1, 2, 3, 4) for s in a.stages):
        p.error(f"--stages must be values in 1..4 and --epochs one value or one per stage; got {a.stages}, {epochs}")
    a.epochs = epochs * len(a.stages) if len(epochs) == 1 else epochs
    return a


def setup_distributed() -> tuple[int, int, torch.device]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            return rank, world, torch.device("cuda", local)
        return rank, world, torch.device("cpu")
    return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gather_for_loss(emb: torch.Tensor, pids: torch.Tensor, world: int):
    """The global batch on every rank (gradients flow back to each rank's own part), so that the OIM
    table receives the same update everywhere and stays identical across ranks."""
    if world == 1:
        return emb, pids
    import torch.distributed.nn.functional as dnn
    all_pids = [torch.empty_like(pids) for _ in range(world)]
    dist.all_gather(all_pids, pids)
    return torch.cat(dnn.all_gather(emb)), torch.cat(all_pids)


def train(a: argparse.Namespace) -> dict:
    rank, world, device = setup_distributed()
    main_proc = rank == 0
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    random.seed(a.seed)
    if a.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    os.makedirs(a.output, exist_ok=True)
    ckpt_path = os.path.join(a.output, "checkpoint.pt")
    resume = None
    if a.resume:
        path = ckpt_path if a.resume == "auto" else a.resume
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--resume: checkpoint {path} does not exist")
        resume = torch.load(path, map_location="cpu", weights_only=False)
    dataset = load_dataset(a.dataset, a.root, a.split, a.protocol)
    if main_proc:
        print(dataset.summary(), file=sys.stderr)
        if not a.backbone_weights and a.dataset != "synthetic":
            warn_random_init(a.arch)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.amp) if device.type == "cuda" else None
    writer = None
    if main_proc:
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(os.path.join(a.output, "tb"))
        except ImportError:
            warnings.warn("tensorboard is not installed: no TensorBoard scalars (metrics.json is still written)")
    history = resume["metrics"] if resume else []
    previous_state = None
    global_step = resume["global_step"] if resume else 0
    start_stage = resume["stage_index"] if resume else 0
    batch = a.ids_per_batch * a.tracklets_per_id
    with ops.backend(a.backend):
        for si, stage in enumerate(a.stages):
            if si < start_stage:
                continue
            cfg = model_config(a, stage)
            model = build_model(backbone_weights=a.backbone_weights if si == 0 and not resume else None, **cfg)
            if previous_state is not None:
                transfer(model, previous_state)
            frozen = stage in (2, 3)
            for p_ in model.backbone.parameters():
                p_.requires_grad_(not frozen)
            model.to(device)
            if device.type == "cuda":
                model = model.to(memory_format=torch.channels_last)
            if a.loss == "oim":
                criterion = OIMLoss(a.embed_dim, dataset.num_train_pids, a.oim_scalar, a.oim_momentum)
            else:
                criterion = SoftmaxLoss(a.embed_dim, dataset.num_train_pids)
            criterion.to(device)
            params = [p_ for p_ in list(model.parameters()) + list(criterion.parameters()) if p_.requires_grad]
            optimizer = torch.optim.SGD(params, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)
            step_epoch = max(1, round(a.epochs[si] * a.lr_step))
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [step_epoch], gamma=0.1)
            start_epoch, skip = 0, 0
            if resume and si == start_stage:
                model.load_state_dict(resume["model"])
                optimizer.load_state_dict(resume["optimizer"])
                scheduler.load_state_dict(resume["scheduler"])
                criterion.load_state_dict(resume["criterion"])
                start_epoch, skip = resume["epoch"], resume["step"]
                set_rng_state(resume["rng"])
            net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
            plan = ClipPlan(dataset.train, a.frames, "train", seed=a.seed + 1000 * si, ids_per_batch=a.ids_per_batch,
                            tracklets_per_id=a.tracklets_per_id)
            shard = ShardedPlan(plan, rank, world, batch) if world > 1 else plan
            loader = build_loader(shard, batch // world, a.height, a.width, pipeline=a.pipeline, workers=a.workers,
                                  device=str(device), start_epoch=start_epoch)

            def checkpoint(epoch: int, step: int) -> None:
                if main_proc:
                    save_atomic({"model": model.state_dict(), "model_config": cfg, "optimizer": optimizer.state_dict(),
                                 "scheduler": scheduler.state_dict(), "criterion": criterion.state_dict(),
                                 "stage_index": si, "stage": stage, "epoch": epoch, "step": step,
                                 "global_step": global_step, "rng": rng_state(), "args": vars(a), "metrics": history},
                                ckpt_path)

            for epoch in range(start_epoch, a.epochs[si]):
                loader.set_epoch(epoch)
                model.train()
                if frozen:
                    model.backbone.eval()  # frozen CNN: BatchNorm statistics stay as they are
                bar = tqdm(total=len(loader), desc=f"stage {stage} epoch {epoch + 1}/{a.epochs[si]}",
                           disable=not (a.progress and main_proc), leave=False)
                t0, clips_seen = time.perf_counter(), 0
                for step, data in enumerate(loader):
                    if step < skip:
                        continue
                    clips = data["clips"].to(device, non_blocking=True)
                    pids = data["pids"].to(device, non_blocking=True)
                    with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        out = net(clips)
                    emb, all_pids = gather_for_loss(out.embedding, pids, world)
                    id_loss = criterion(emb, all_pids)
                    loss = id_loss + a.diversity_weight * out.diversity
                    if not torch.isfinite(loss):
                        raise NonFiniteLoss(f"non-finite loss {loss.item()} at stage {stage}, epoch {epoch + 1}, "
                                            f"step {step} (id loss {id_loss.item()}, diversity {out.diversity.item()});"
                                            f" the last good checkpoint is {ckpt_path}")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    global_step += 1
                    clips_seen += clips.shape[0] * world
                    rate = clips_seen / (time.perf_counter() - t0)
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}",
                                    clips_s=f"{rate:.1f}")
                    bar.update(1)
                    if writer:
                        writer.add_scalar("loss/total", loss.item(), global_step)
                        writer.add_scalar("loss/id", id_loss.item(), global_step)
                        writer.add_scalar("loss/diversity", out.diversity.item(), global_step)
                        writer.add_scalar("lr", optimizer.param_groups[0]["lr"], global_step)
                        writer.add_scalar("clips_per_s", rate, global_step)
                    if a.checkpoint_every and global_step % a.checkpoint_every == 0:
                        checkpoint(epoch, step + 1)
                    if a.max_steps and global_step >= a.max_steps:
                        checkpoint(epoch, step + 1)
                        bar.close()
                        return finish(a, history, writer, world, criterion, stopped=True)
                bar.close()
                skip = 0
                scheduler.step()
                if main_proc:
                    print(f"stage {stage} epoch {epoch + 1}/{a.epochs[si]}: loss {loss.item():.4f} "
                          f"(id {id_loss.item():.4f}, Q {out.diversity.item():.4f}), {rate:.1f} clips/s", file=sys.stderr)
                last = epoch + 1 == a.epochs[si]
                if main_proc and not a.no_eval and ((a.eval_every and (epoch + 1) % a.eval_every == 0) or last):
                    result = evaluate_dataset(model, dataset, a.frames, a.height, a.width, a.protocol,
                                              pipeline=a.pipeline, workers=a.workers, device=str(device),
                                              amp_dtype=amp_dtype, progress=a.progress, rerank=a.rerank)
                    model.train()
                    record = {**result, "dataset": a.dataset, "split": a.split, "stage": stage, "epoch": epoch + 1}
                    history.append(record)
                    write_metrics(a.output, history)
                    if writer:
                        for k in ("rank1", "rank5", "mAP"):
                            writer.add_scalar(f"eval/{k}", record[k], global_step)
                    print(f"  eval ({a.protocol}): rank-1 {record['rank1']:.3f} mAP {record['mAP']:.3f} "
                          f"(chance rank-1 {record['chance_rank1']:.3f})", file=sys.stderr)
                    if a.rerank:
                        print(f"  re-ranked: rank-1 {record['rerank_rank1']:.3f} mAP {record['rerank_mAP']:.3f}",
                              file=sys.stderr)
                checkpoint(epoch + 1, 0)
            previous_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            resume = None
    return finish(a, history, writer, world, criterion)


def write_metrics(output: str, history: list) -> None:
    save = {"latest": history[-1], "history": history}
    tmp = os.path.join(output, ".metrics.json.tmp")
    with open(tmp, "w") as f:
        json.dump(save, f, indent=2)
    os.replace(tmp, os.path.join(output, "metrics.json"))


def finish(a, history, writer, world, criterion, stopped: bool = False) -> dict:
    if writer:
        writer.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    table = criterion.lut.detach().cpu().clone() if isinstance(criterion, OIMLoss) else None
    return {"metrics": history, "stopped": stopped, "oim_table": table}


def main(argv=None) -> dict:
    a = parse_args(argv)
    try:
        return train(a)
    except NonFiniteLoss as e:
        print(f"stafast.train: {e}", file=sys.stderr)
        raise SystemExit(3) from None


if __name__ == "__main__":
    main()
