"""stafast.losses: OIM (the paper's, Sec. 3.5), softmax cross-entropy (a classifier on the
batch-normalised feature before the L2 norm), the batch-hard triplet loss, and the registry of
training losses (--loss).

LOSSES maps a --loss name to a builder(cfg, num_classes) -> Criterion, where cfg is the run's
TrainConfig (read by attribute: its fields hold each loss's options) and num_classes the training
ids.  A Criterion is a set of named terms; its forward(output, targets) returns
{term name: weighted scalar}, which the trainer sums with diversity_weight * output.diversity_loss
and records by name ("train_<name>" in metrics.json).  A new loss is one builder and one entry
here, its options fields of TrainConfig.
"""
from __future__ import annotations

from torch import Tensor, nn

from .diversity import DIVERSITY_FORMS, diversity_term
from .oim import OIMLoss
from .softmax import SoftmaxLoss
from .triplet import TripletLoss

RESERVED = ("loss", "diversity")  # what the trainer records beside a criterion's terms: the total, the Q term


class Criterion(nn.Module):
    """Named loss terms, each a loss module applied to the STAOutput field it declares (`takes`:
    e.g. "embedding" or "feature") and the targets, times its weight (default 1).

    forward(output, targets) -> {name: weight * loss(getattr(output, loss.takes), targets)}, in the
    order of `terms`.  `takes` lists the output fields it reads (gathered across ranks under DDP)."""

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float] | None = None):
        super().__init__()
        weights = dict(weights or {})
        problems = [f"the term name {n!r} is reserved for the trainer's records {RESERVED}" for n in terms if n in RESERVED]
        problems += [f"term {n!r}: {type(m).__name__} declares no `takes` (the STAOutput field it reads)"
                     for n, m in terms.items() if not isinstance(getattr(m, "takes", None), str)]
        problems += [f"a weight for {n!r}, which is not one of its terms" for n in weights if n not in terms]
        if not terms or problems:
            raise ValueError("Criterion: " + ("; ".join(problems) or "needs at least one term"))
        self.losses = nn.ModuleDict(terms)
        self.weights = {n: float(weights.get(n, 1.0)) for n in terms}

    @property
    def terms(self) -> tuple[str, ...]:
        return tuple(self.losses)

    @property
    def takes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.takes for m in self.losses.values()))

    def forward(self, output, targets: Tensor) -> dict[str, Tensor]:
        return {n: self.weights[n] * loss(getattr(output, loss.takes), targets) for n, loss in self.losses.items()}

    def extra_repr(self) -> str:
        return f"weights={self.weights}"


def _oim(cfg, num_classes: int) -> OIMLoss:
    return OIMLoss(cfg.embed_dim, num_classes, cfg.oim_scalar, cfg.oim_momentum, label_smoothing=cfg.label_smoothing)


def _softmax(cfg, num_classes: int) -> SoftmaxLoss:
    return SoftmaxLoss(cfg.embed_dim, num_classes, label_smoothing=cfg.label_smoothing)


def _with_triplet(id_loss: nn.Module, cfg) -> Criterion:
    return Criterion({"id": id_loss, "triplet": TripletLoss(cfg.triplet_margin)}, {"triplet": cfg.triplet_weight})


def oim(cfg, num_classes: int) -> Criterion:
    """the paper's OIM, on the L2-normalised embedding"""
    return Criterion({"id": _oim(cfg, num_classes)})


def softmax(cfg, num_classes: int) -> Criterion:
    """cross-entropy of a classifier on the batch-normalised feature before the L2 norm"""
    return Criterion({"id": _softmax(cfg, num_classes)})


def oim_triplet(cfg, num_classes: int) -> Criterion:
    """OIM plus the batch-hard triplet loss on the embedding"""
    return _with_triplet(_oim(cfg, num_classes), cfg)


def softmax_triplet(cfg, num_classes: int) -> Criterion:
    """softmax plus the batch-hard triplet loss on the embedding (a BNNeck, Luo et al. 2019)"""
    return _with_triplet(_softmax(cfg, num_classes), cfg)


LOSSES = {"oim": oim, "softmax": softmax, "oim+triplet": oim_triplet, "softmax+triplet": softmax_triplet}


def build_criterion(cfg, num_classes: int) -> Criterion:
    """The Criterion of cfg.loss (one of LOSSES: TrainConfig checks it), built by its entry."""
    criterion = LOSSES[cfg.loss](cfg, num_classes)
    if not isinstance(criterion, Criterion):
        raise TypeError(f"LOSSES[{cfg.loss!r}] built a {type(criterion).__name__}, expected a stafast.losses.Criterion")
    return criterion


__all__ = ["DIVERSITY_FORMS", "LOSSES", "RESERVED", "Criterion", "OIMLoss", "SoftmaxLoss", "TripletLoss",
           "build_criterion", "diversity_term"]
