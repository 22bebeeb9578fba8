"""Batch-hard triplet loss (Hermans, Beyer and Leibe, "In Defense of the Triplet Loss for Person
Re-Identification", 2017): for each anchor a of the batch, its farthest positive and nearest
negative by Euclidean distance, hinge with a margin,

    l_a = max(0, m + max_{p: y_p = y_a, p != a} d(a, p) - min_{n: y_n != y_a} d(a, n)),

averaged over the anchors that have both a positive and a negative.  Needs P ids x Q >= 2 clips
per batch (--ids-per-batch, --tracklets-per-id).  The strong video re-ID baselines put it on the
L2-normalised embedding with m = 0.3 (AP3D, TCLNet: cosine distance, margin 0.3; Luo et al.'s
BNNeck: the feature before the batch normalisation, which here is normalised into the embedding).

No host sync and no data-dependent shape: the hardest pairs are masked max / min over the whole
B x B distance matrix, and anchors without a positive or a negative are weighted out instead of
being indexed away, so a step with it can be captured on a GPU.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def pairwise_distances(x: Tensor) -> Tensor:
    """(B, B) Euclidean distances between the rows of x, in float32 (or float64 for float64 x).
    Squared distances are clamped at 1e-12 before the root: the gradient of sqrt at 0 (the
    diagonal, identical rows) would be infinite; clamped entries get no gradient."""
    x = x.double() if x.dtype == torch.float64 else x.float()
    sq = x.pow(2).sum(1)
    return (sq[:, None] + sq[None, :] - 2 * x @ x.t()).clamp(min=1e-12).sqrt()


def batch_hard_triplet(x: Tensor, targets: Tensor, margin: float) -> Tensor:
    """The mean over valid anchors of the batch-hard hinge (module doc); 0 when no anchor is valid."""
    dist = pairwise_distances(x)
    same = targets[:, None] == targets[None, :]
    eye = torch.eye(len(targets), dtype=torch.bool, device=targets.device)
    positive, negative = same & ~eye, ~same
    hardest_positive = dist.masked_fill(~positive, float("-inf")).amax(1)
    hardest_negative = dist.masked_fill(~negative, float("inf")).amin(1)
    # an anchor without a positive has -inf, one without a negative +inf: the hinge is 0 for both
    valid = (positive.any(1) & negative.any(1)).to(dist.dtype)
    hinge = torch.relu(hardest_positive - hardest_negative + margin) * valid
    return hinge.sum() / valid.sum().clamp(min=1)


class TripletLoss(nn.Module):
    """Batch-hard triplet loss over the rows of `inputs` (B, D) with identity `targets` (B,)."""

    takes = "embedding"  # which STAOutput field a criterion passes: the L2-normalised embedding

    def __init__(self, margin: float = 0.3):
        super().__init__()
        if margin < 0:
            raise ValueError(f"TripletLoss: margin must be >= 0, got {margin}")
        self.margin = float(margin)

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        if inputs.dim() != 2 or targets.shape != inputs.shape[:1]:
            raise ValueError(f"TripletLoss: inputs must be (B, D) and targets (B,), got {tuple(inputs.shape)} and "
                             f"{tuple(targets.shape)}")
        if targets.device.type == "cpu" and not torch.compiler.is_compiling():  # (on a GPU this check would sync)
            same = targets[:, None] == targets[None, :]
            if not ((same.sum(1) > 1) & ~same.all(1)).any():
                raise ValueError("TripletLoss needs at least one id with two clips and two different ids in the "
                                 f"batch; got targets {targets.tolist()}")
        return batch_hard_triplet(inputs, targets, self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
