"""The typed configuration of a training run: every flag of `python -m stafast.train`, in one place.

`TrainConfig` is what the trainer reads and what its checkpoints store (as a plain dict, read
back with `TrainConfig.from_dict`).  Each field carries its help text, its CLI group and, where
the value is a name, the registry of allowed names; `stafast.train` builds its argument parser
from these fields, so flags, defaults, choices and checks cannot drift apart.

Defaults follow the paper (Sec. 4.2) for the real datasets; `--dataset synthetic` replaces the
fields of SYNTHETIC (a small CPU-sized run).  `TrainConfig.create` applies that preset.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from . import ops
from .data import DATASET_NAMES, PIPELINES
from .losses import LOSSES
from .metrics import PROTOCOLS
from .models import ABLATIONS, ARCHS, DIVERSITY_KINDS, SPATIAL_POOLINGS, TEMPORAL_POOLINGS, with_ablation
from .models.backbone import LAST_STRIDES
from .nn import ENHANCE_SCALES
from .ops._checks import choice

AMP = ("bf16", "fp16", "none")
STAGES = (1, 2, 3, 4)

# Synthetic: ResNet-18 from random weights on 128x64 clips, stage 4 only, with the softmax loss:
# OIM's table starts at zero and compares normalised embeddings, which a random CNN maps to nearly
# one direction (see stafast/losses/softmax.py), so OIM learns far more slowly here.
SYNTHETIC = dict(arch="resnet18", height=128, width=64, stages=(4,), epochs=(15,), lr=0.01, lr_step=0.75,
                 ids_per_batch=4, tracklets_per_id=2, loss="softmax")


def _opt(default, help: str, group: str, choices=None, **cli):
    return field(default=default, metadata=dict(help=help, group=group, choices=choices, cli=cli))


MODEL, OPTIM, RUN = "model (Sec. 3; Table 1 and Table 2 ablations)", "optimisation (Sec. 4.2)", "running"


@dataclass
class TrainConfig:
    dataset: str = _opt("synthetic", "dataset", "data", DATASET_NAMES)
    root: str | None = _opt(None, "dataset root in its published layout (synthetic: optional cache folder)", "data")
    split: int = _opt(0, "iLIDS-VID / PRID2011 split 0..9", "data")
    output: str = _opt("runs/stafast", "output folder: checkpoint.pt, metrics.json, tb/", "data")
    protocol: str = _opt("official", "MARS evaluation protocol", "data", tuple(PROTOCOLS))

    arch: str = _opt("resnet50", "ResNet backbone", MODEL, tuple(ARCHS))
    backbone_weights: str | None = _opt(
        None, "backbone start: a torchvision ResNet state dict (.pth) on this machine, or 'imagenet' for "
              "torchvision's ImageNet weights (downloaded once into the torch hub cache); default: random", MODEL)
    last_stride: int = _opt(2, "stride of res5 (1: a 16x8 grid at 256x128)", MODEL, LAST_STRIDES)
    frames: int = _opt(6, "N frames per clip", MODEL)
    heads: int = _opt(6, "K spatial attention models", MODEL)
    hidden: int = _opt(256, "d of Eq. 1", MODEL)
    embed_dim: int = _opt(128, "size of the L2-normalised embedding", MODEL)
    ablation: str | None = _opt(
        None, "a Table 1 row: sets --spatial-pooling, --diversity-kind, --temporal-pooling and --enhance as that row "
              "does; a flag may repeat the row's value but not contradict it (an error)", MODEL, tuple(ABLATIONS))
    spatial_pooling: str = _opt("attention", "spatial pooling of each frame: the K heads of Eqs. 1-3, or avg (Table "
                                             "1's baseline: global average pooling, K = 1)", MODEL, SPATIAL_POOLINGS)
    diversity_kind: str = _opt("hellinger", "diversity penalty: Q (Eq. 9), Q' (Eq. 10) or none", MODEL,
                               DIVERSITY_KINDS)
    diversity_weight: float = _opt(1.0, "coefficient of Q in the loss", MODEL)
    temporal_pooling: str = _opt("attention", "temporal pooling (Eqs. 11-13, or average / max)", MODEL,
                                 TEMPORAL_POOLINGS)
    enhance: bool = _opt(True, "the frame enhancement E of Eq. 4", MODEL)
    enhance_scale: str = _opt("sqrt", "scale of X X^T in the enhancement (sqrt: 1/sqrt(D))", MODEL, ENHANCE_SCALES)
    height: int = _opt(256, "input height", MODEL)
    width: int = _opt(128, "input width", MODEL)

    stages: tuple[int, ...] = _opt(
        (1, 2, 3), "comma-separated stages to run, in order: 1 CNN alone, 2 attention + average pooling (CNN "
                   "frozen), 3 all but the CNN, 4 whole network", OPTIM)
    epochs: tuple[int, ...] = _opt((30, 20, 20), "epochs per stage (one value, or one per stage)", OPTIM)
    loss: str = _opt("oim", "training loss, stafast.losses.LOSSES (" + "; ".join(
        f"{name}: {build.__doc__.strip().rstrip('.')}" for name, build in LOSSES.items()) + ")", OPTIM, tuple(LOSSES))
    oim_scalar: float = _opt(30.0, "OIM logit scale (1 / temperature)", OPTIM)
    oim_momentum: float = _opt(0.5, "OIM table momentum", OPTIM)
    lr: float = _opt(0.1, "initial learning rate, x0.1 after --lr-step of each stage's epochs", OPTIM)
    lr_step: float = _opt(0.5, "fraction of a stage's epochs after which the learning rate drops", OPTIM)
    momentum: float = _opt(0.9, "SGD momentum", OPTIM)
    weight_decay: float = _opt(5e-4, "SGD weight decay", OPTIM)
    ids_per_batch: int = _opt(8, "P ids per batch", OPTIM)
    tracklets_per_id: int = _opt(4, "Q tracklets per id (batch = P x Q clips)", OPTIM)
    seed: int = _opt(0, "seed of the initialisation and of the clip plan", OPTIM)
    deterministic: bool = _opt(False, "deterministic algorithms (bit-exact resume on the same machine)", OPTIM)

    backend: str = _opt("auto", "stafast.ops backend", RUN, ("auto",) + ops.BACKENDS)
    amp: str = _opt("bf16", "autocast dtype on GPU", RUN, AMP)
    compile: bool = _opt(False, "torch.compile the model (the stafast ops stay opaque custom ops)", RUN)
    pipeline: str = _opt("auto", "frame pipeline (auto: DALI when installed)", RUN, PIPELINES)
    workers: int = _opt(2, "data worker processes", RUN)
    eval_every: int = _opt(0, "evaluate every E epochs (0: at the end of each stage)", RUN)
    no_eval: bool = _opt(False, "never evaluate", RUN)
    rerank: bool = _opt(False, "evaluations also report CMC/mAP after k-reciprocal re-ranking (rerank_*)", RUN)
    log_every: int = _opt(50, "read the losses (a host sync) every S steps, and at each epoch's end", RUN)
    checkpoint_every: int = _opt(0, "also checkpoint every M steps", RUN)
    max_steps: int = _opt(0, "stop (with a checkpoint) after this many steps in all; 0: no limit", RUN)
    resume: str | None = _opt(None, "checkpoint to resume; without a value OUTPUT/checkpoint.pt", RUN,
                              nargs="?", const="auto")
    progress: bool | None = _opt(None, "progress bars (default: when stderr is a terminal)", RUN)

    def __post_init__(self):
        self.stages, self.epochs = tuple(self.stages), tuple(self.epochs)
        if len(self.epochs) == 1 and len(self.stages) > 1:
            self.epochs = self.epochs * len(self.stages)
        problems = []
        for f in dataclasses.fields(self):
            choices, value = f.metadata["choices"], getattr(self, f.name)
            if choices is not None and value is not None:
                problems += _problem(choice, "TrainConfig", f.name, value, tuple(choices))
        if not problems:
            problems += _problem(with_ablation, self.ablation, {k: getattr(self, k) for k in ABLATION_FIELDS})
        if not self.stages or any(s not in STAGES for s in self.stages):
            problems.append(f"stages={self.stages}: each must be one of {STAGES}")
        if len(self.epochs) != len(self.stages) or any(e < 0 for e in self.epochs):
            problems.append(f"epochs={self.epochs}: one value >= 0, or one per stage {self.stages}")
        for name in ("frames", "heads", "hidden", "embed_dim", "height", "width", "ids_per_batch", "tracklets_per_id",
                     "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("workers", "eval_every", "checkpoint_every", "max_steps"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))

    @classmethod
    def create(cls, dataset: str = "synthetic", ablation: str | None = None, **overrides) -> "TrainConfig":
        """The configuration for `dataset`: the paper's defaults, or SYNTHETIC's for "synthetic", then
        the fields of Table 1 row `ablation`, then `overrides` (None values are left at those), which
        must not contradict the row (stafast.models.with_ablation)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        preset = {**(SYNTHETIC if dataset == "synthetic" else {}),
                  **with_ablation(ablation, {k: v for k, v in given.items() if k in ABLATION_FIELDS})}
        return cls(dataset=dataset, ablation=ablation, **{**preset, **given})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "configuration") -> "TrainConfig":
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{source}: unknown training configuration fields {unknown}")
        return cls(**d)

    @property
    def batch_size(self) -> int:
        return self.ids_per_batch * self.tracklets_per_id


ABLATION_FIELDS = tuple(dict.fromkeys(k for row in ABLATIONS.values() for k in row))  # the fields a row sets


def _problem(check, *args) -> list[str]:
    """[] when check(*args) passes, else [its ValueError's message]."""
    try:
        check(*args)
        return []
    except ValueError as e:
        return [str(e)]


def field_types() -> dict[str, type]:
    """Field name -> the type its CLI value is parsed into: int, float, str, bool or tuple (of ints)."""
    out = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = tuple if typing.get_origin(hint) is tuple else args[0] if args else hint
    return out
