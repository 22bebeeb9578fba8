"""The typed configuration of a training run: every flag of `python -m stafast.train`, in one place.

`TrainConfig` is what the trainer reads and what its checkpoints store (as a plain dict, read
back with `TrainConfig.from_dict`).  Each field carries its help text, its CLI group and, where
the value is a name, the registry of allowed names (stafast.cli.option); `stafast.train` derives
its argument parser from these fields (stafast.cli), so flags, defaults, choices and checks
cannot drift apart.

Defaults follow the paper (Sec. 4.2) for the real datasets; `--dataset synthetic` replaces the
fields of SYNTHETIC (a small CPU-sized run), `--recipe` those of RECIPES.  `TrainConfig.create`
applies those presets, then the fields of an --ablation row, then the explicit values.  STAGES is the table of the schedule's stages (--stages).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import ops
from .cli import option, registry_help
from .data import AUGMENTATIONS, DATASET_NAMES, DATASETS, PIPELINES, parse_augment
from .losses import DIVERSITY_FORMS, LOSSES
from .metrics import PROTOCOLS
from .models import ABLATIONS, ARCHS, DIVERSITY_KINDS, SPATIAL_POOLINGS, TEMPORAL_POOLINGS, with_ablation
from .models.backbone import LAST_STRIDES
from .nn import ENHANCE_SCALES
from .ops._checks import choice
from .optim import OPTIMIZERS, SCHEDULES

AMP = ("bf16", "fp16", "none")


@dataclass(frozen=True)
class StageSpec:
    """What one stage of the schedule (--stages) trains.  A stage starts from the weights of the stage
    before it in --stages that fit (same name and shape: stafast.train.transfer), the first one from
    --backbone-weights; it builds its own optimizer and schedule."""
    trains: str                                 # for --help
    frozen: tuple[str, ...] = ()                # STA submodules it does not train (kept in eval mode too)
    forces: dict = dataclasses.field(default_factory=dict)  # STA settings it imposes over the configuration's


# The stages of the paper's schedule (Sec. 4.2), read by the trainer in this one place.
STAGES = {
    1: StageSpec("the CNN alone (Table 1's baseline: average pooling, no attention)", forces=ABLATIONS["baseline"]),
    2: StageSpec("spatial attention + diversity with average temporal pooling, CNN frozen", ("backbone",),
                 dict(temporal_pooling="avg")),
    3: StageSpec("all but the CNN (temporal attention, enhancement), CNN frozen", ("backbone",)),
    4: StageSpec("the whole network (Table 1's Ind)"),
}

# Synthetic: ResNet-18 from random weights on 128x64 clips, stage 4 only, with the softmax loss:
# OIM's table starts at zero and compares normalised embeddings, which a random CNN maps to nearly
# one direction (see stafast/losses/softmax.py), so OIM learns far more slowly here.
SYNTHETIC = dict(arch="resnet18", height=128, width=64, stages=(4,), epochs=(15,), lr=0.01, lr_step=0.75,
                 ids_per_batch=4, tracklets_per_id=2, loss="softmax")

# --recipe: presets that explicit flags override.  One precedence rule, the same for every field:
# an explicit flag > the recipe (with --dataset synthetic, its CPU-sized variant below) > --dataset
# synthetic's preset > the field's default (the paper's, Sec. 4.2).  "paper" is those defaults.
# "strong" is the video re-ID baseline of recent years (PSTA, TCLNet, AP3D, fast-reid-style), each
# setting from its source; it keeps the paper's model (the STA network, --last-stride 2) and its
# evaluation on the L2-normalised embedding, where Luo et al. use last stride 1 and the feature
# after the batch normalisation.
RECIPES = {
    "paper": {},
    "strong": dict(
        loss="softmax+triplet",                 # cross-entropy after a BNNeck, triplet before it (Luo et al. 2019)
        label_smoothing=0.1,                    # Luo et al. 2019, after Szegedy et al. 2016
        triplet_margin=0.3,                     # Hermans et al. 2017; Luo et al. 2019; AP3D (Gu et al. 2020)
        ids_per_batch=8, tracklets_per_id=4,    # 32 clips, 4 per id (AP3D, TCLNet: --num_instances 4)
        augment="crop,flip,erase",              # Luo et al. 2019: pad 10 and crop, flip, random erasing p = 0.5
        optimizer="adam", lr=3.5e-4, weight_decay=5e-4,  # Luo et al. 2019 (AP3D, TCLNet: 3e-4)
        warmup_epochs=10,                       # Luo et al. 2019: linear from 3.5e-5 over 10 epochs
        stages=(4,), epochs=(120,), lr_step=1 / 3,  # one end-to-end stage of 120 epochs, x0.1 at 40 (Luo et al.'s
    ),                                          # first step; the step schedule takes one, their second is at 70)
}
# With --dataset synthetic a recipe keeps the CPU-sized run: 8 epochs of 4 ids x 4 clips (as many clips
# as the paper recipe's 15 epochs of 4 x 2), warmup 1 epoch (Luo et al.'s 10 of 120, rounded up), and
# the synthetic schedule's late step (from random weights, as SYNTHETIC).
SYNTHETIC_RECIPES = {"paper": {}, "strong": dict(ids_per_batch=4, tracklets_per_id=4, epochs=(8,), warmup_epochs=1,
                                                 lr_step=0.75)}


def split_option(group: str | None = None, all_splits: bool = False):
    """The --split of every command: an int (annotate the field `int`), or with `all_splits` also
    "all" for the mean over the 10 splits (annotate it `int | Literal["all"]`)."""
    return option(0, "iLIDS-VID / PRID2011 split 0..9" + (", or all: the mean over the 10" if all_splits else ""),
                  group)


MODEL, OPTIM, RUN = "model (Sec. 3; Table 1 and Table 2 ablations)", "optimisation (Sec. 4.2)", "running"


@dataclass
class TrainConfig:
    dataset: str = option("synthetic", "dataset", "data", DATASET_NAMES)
    root: str | None = option(None, "dataset root in its published layout (synthetic: optional cache folder)", "data")
    split: int = split_option("data")
    output: str = option("runs/stafast", "output folder: checkpoint.pt, metrics.json, tb/", "data")
    protocol: str | None = option(None, "evaluation protocol (default: the dataset's leaderboard one, see the "
                                        "README's datasets table)", "data", PROTOCOLS)

    arch: str = option("resnet50", "ResNet backbone", MODEL, tuple(ARCHS))
    backbone_weights: str | None = option(
        None, "backbone start: a torchvision ResNet state dict (.pth) on this machine, or 'imagenet' for "
              "torchvision's ImageNet weights (downloaded once into the torch hub cache); default: random", MODEL)
    last_stride: int = option(2, "stride of res5 (1: a 16x8 grid at 256x128)", MODEL, LAST_STRIDES)
    frames: int = option(6, "N frames per clip", MODEL)
    heads: int = option(6, "K spatial attention models", MODEL)
    hidden: int = option(256, "d of Eq. 1", MODEL)
    embed_dim: int = option(128, "size of the L2-normalised embedding", MODEL)
    ablation: str | None = option(
        None, "a Table 1 row: sets --spatial-pooling, --diversity-kind, --temporal-pooling and --enhance as that row "
              "does; a flag may repeat the row's value but not contradict it (an error)", MODEL, tuple(ABLATIONS))
    spatial_pooling: str = option("attention", "spatial pooling of each frame: the K heads of Eqs. 1-3, or avg (Table "
                                             "1's baseline: global average pooling, K = 1)", MODEL, SPATIAL_POOLINGS)
    diversity_kind: str = option("hellinger", "diversity penalty: Q (Eq. 9), Q' (Eq. 10) or none", MODEL,
                               DIVERSITY_KINDS)
    diversity_weight: float = option(1.0, "coefficient of Q in the loss", MODEL)
    diversity_form: str = option("mean", "how Q enters the loss (stafast/losses/diversity.py): mean, the mean over the "
                                         "batch's frames; authors, sqrt(sum over them + 1e-5) as the authors' released "
                                         "code", MODEL, DIVERSITY_FORMS)
    temporal_pooling: str = option("attention", "temporal pooling (Eqs. 11-13, or average / max)", MODEL,
                                 TEMPORAL_POOLINGS)
    enhance: bool = option(True, "the frame enhancement E of Eq. 4", MODEL)
    enhance_scale: str = option("sqrt", "scale of X X^T in the enhancement (sqrt: 1/sqrt(D))", MODEL, ENHANCE_SCALES)
    height: int = option(256, "input height", MODEL)
    width: int = option(128, "input width", MODEL)

    stages: tuple[int, ...] = option(
        (1, 2, 3), "comma-separated stages to run, in order (stafast.config.STAGES): " + "; ".join(
            f"{n} {spec.trains}" for n, spec in STAGES.items()) + ". Each starts from the weights of the one "
        "before it", OPTIM)
    epochs: tuple[int, ...] = option((30, 20, 20), "epochs per stage (one value, or one per stage)", OPTIM)
    loss: str = option("oim", registry_help("training loss, stafast.losses.LOSSES", LOSSES), OPTIM, LOSSES)
    oim_scalar: float = option(30.0, "OIM logit scale (1 / temperature)", OPTIM)
    oim_momentum: float = option(0.5, "OIM table momentum", OPTIM)
    label_smoothing: float = option(0.0, "label smoothing epsilon of the id loss's cross-entropy (Szegedy et al. 2016)",
                                    OPTIM)
    triplet_margin: float = option(0.3, "margin of the batch-hard triplet loss of the +triplet losses", OPTIM)
    triplet_weight: float = option(1.0, "coefficient of the triplet loss", OPTIM)
    augment: str = option("flip", "training augmentations, comma-separated from " + ",".join(AUGMENTATIONS) +
                          " (stafast/data/plan.py: pad-and-crop, horizontal flip, random erasing), or none", OPTIM)
    recipe: str = option("paper", "a preset of the settings below (stafast.config.RECIPES): paper, the paper's "
                                  "(Sec. 4.2); strong, the strong video re-ID baseline (softmax+triplet on a BNNeck, "
                                  "label smoothing 0.1, 4 clips per id, crop/flip/erase, Adam 3.5e-4, 10 warmup "
                                  "epochs). Precedence: an explicit flag > the recipe > --dataset synthetic's "
                                  "preset > the default", OPTIM, RECIPES)
    optimizer: str = option("sgd", registry_help("optimizer, stafast.optim.OPTIMIZERS", OPTIMIZERS), OPTIM,
                            OPTIMIZERS)
    schedule: str = option("step", registry_help("learning-rate schedule of each stage, stafast.optim.SCHEDULES",
                                                 SCHEDULES), OPTIM, SCHEDULES)
    warmup_epochs: int = option(0, "epochs of linear learning-rate warmup at each stage's start, from 0.1 x --lr "
                                   "(Luo et al. 2019); 0: none", OPTIM)
    lr: float = option(0.1, "initial learning rate of each stage", OPTIM)
    lr_step: float = option(0.5, "the step schedule: fraction of a stage's epochs after which the learning rate "
                                 "drops", OPTIM)
    momentum: float = option(0.9, "SGD momentum", OPTIM)
    weight_decay: float = option(5e-4, "weight decay (an L2 term for both optimizers)", OPTIM)
    ids_per_batch: int = option(8, "P ids per batch", OPTIM)
    tracklets_per_id: int = option(4, "Q tracklets per id (batch = P x Q clips)", OPTIM)
    seed: int = option(0, "seed of the initialisation and of the clip plan", OPTIM)
    deterministic: bool = option(False, "deterministic algorithms (bit-exact resume on the same machine)", OPTIM)

    backend: str = option("auto", "stafast.ops backend", RUN, ("auto",) + ops.BACKENDS)
    amp: str = option("bf16", "autocast dtype on GPU", RUN, AMP)
    compile: bool = option(False, "torch.compile the model (the stafast ops stay opaque custom ops)", RUN)
    pipeline: str = option("auto", "frame pipeline (auto: DALI when installed)", RUN, PIPELINES)
    workers: int = option(2, "data worker processes", RUN)
    eval_every: int = option(0, "evaluate every E epochs (0: at the end of each stage)", RUN)
    no_eval: bool = option(False, "never evaluate", RUN)
    rerank: bool = option(False, "evaluations also report CMC/mAP after k-reciprocal re-ranking (rerank_*)", RUN)
    log_every: int = option(50, "read the losses (a host sync) every S steps, and at each epoch's end", RUN)
    checkpoint_every: int = option(0, "also checkpoint every M steps", RUN)
    max_steps: int = option(0, "stop (with a checkpoint) after this many steps in all; 0: no limit", RUN)
    resume: str | None = option(None, "checkpoint to resume; without a value OUTPUT/checkpoint.pt", RUN,
                              nargs="?", const="auto")
    progress: bool | None = option(None, "progress: a bar on a terminal, a line every 30 s in a log (default: on)",
                                   RUN)

    def __post_init__(self):
        self.stages, self.epochs = tuple(self.stages), tuple(self.epochs)
        if self.protocol is None and self.dataset in DATASETS:
            self.protocol = DATASETS[self.dataset].default_protocol
        if len(self.epochs) == 1 and len(self.stages) > 1:
            self.epochs = self.epochs * len(self.stages)
        problems = []
        for f in dataclasses.fields(self):
            choices, value = f.metadata["choices"], getattr(self, f.name)
            if choices is not None and value is not None:
                problems += _problem(choice, "TrainConfig", f.name, value, tuple(choices))
        if not problems:
            problems += _problem(with_ablation, self.ablation, {k: getattr(self, k) for k in ABLATION_FIELDS})
        if not problems and self.dataset in DATASETS and self.protocol not in DATASETS[self.dataset].protocols:
            problems.append(f"protocol={self.protocol!r} is not one of dataset {self.dataset}'s protocols "
                            f"{DATASETS[self.dataset].protocols}")
        if not self.stages or any(s not in STAGES for s in self.stages):
            problems.append(f"stages={self.stages}: each must be one of {tuple(STAGES)}")
        if len(self.epochs) != len(self.stages) or any(e < 0 for e in self.epochs):
            problems.append(f"epochs={self.epochs}: one value >= 0, or one per stage {self.stages}")
        for name in ("frames", "heads", "hidden", "embed_dim", "height", "width", "ids_per_batch", "tracklets_per_id",
                     "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("workers", "eval_every", "checkpoint_every", "max_steps"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        problems += _problem(parse_augment, self.augment)
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing={self.label_smoothing} must be in [0, 1)")
        if "triplet" in self.loss and (self.ids_per_batch < 2 or self.tracklets_per_id < 2):
            problems.append(f"loss={self.loss!r} needs two ids with two tracklets each in every batch, got "
                            f"ids_per_batch={self.ids_per_batch}, tracklets_per_id={self.tracklets_per_id}")
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))

    @classmethod
    def create(cls, dataset: str = "synthetic", ablation: str | None = None, recipe: str = "paper",
               **overrides) -> "TrainConfig":
        """The configuration for `dataset`: the paper's defaults, or SYNTHETIC's for "synthetic", then
        the `recipe`'s settings (RECIPES, and for "synthetic" SYNTHETIC_RECIPES), then the fields of
        Table 1 row `ablation`, then `overrides` (None values are left at those), which must not
        contradict the row (stafast.models.with_ablation)."""
        recipe = "paper" if recipe is None else recipe
        choice("TrainConfig", "recipe", recipe, tuple(RECIPES))
        given = {k: v for k, v in overrides.items() if v is not None}
        synthetic = dataset == "synthetic"
        preset = {**(SYNTHETIC if synthetic else {}), **RECIPES[recipe], **(SYNTHETIC_RECIPES[recipe] if synthetic else {}),
                  **with_ablation(ablation, {k: v for k, v in given.items() if k in ABLATION_FIELDS})}
        return cls(dataset=dataset, ablation=ablation, recipe=recipe, **{**preset, **given})

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
