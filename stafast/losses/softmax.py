"""Softmax cross-entropy over identities: the alternative to OIM that Sec. 3.5 mentions."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SoftmaxLoss(nn.Module):
    """A linear classifier on the embedding, then cross-entropy (label smoothing optional)."""

    def __init__(self, num_features: int, num_classes: int, label_smoothing: float = 0.0):
        super().__init__()
        self.classifier = nn.Linear(num_features, num_classes)
        self.label_smoothing = label_smoothing

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(self.classifier(inputs).float(), targets, label_smoothing=self.label_smoothing)
