"""Batch-hard triplet loss (Hermans et al., 2017): for each anchor, its farthest positive and
nearest negative in the batch, hinge with a margin.  Needs P ids x Q clips batches."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class TripletLoss(nn.Module):
    def __init__(self, margin: float = 0.3):
        super().__init__()
        self.margin = margin

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        dist = torch.cdist(inputs.float(), inputs.float())
        same = targets[:, None] == targets[None, :]
        valid = same.sum(1) > 1  # anchors with a positive other than themselves
        if not valid.any() or same.all():
            raise ValueError("TripletLoss needs at least one id with two clips and two different ids in the batch; "
                             f"got targets {targets.tolist()}")
        hardest_pos = dist.masked_fill(~same, float("-inf")).amax(1)
        hardest_neg = dist.masked_fill(same, float("inf")).amin(1)
        loss = torch.relu(hardest_pos - hardest_neg + self.margin)
        return loss[valid].mean()
