"""Softmax cross-entropy over identities, the alternative to OIM that Sec. 3.5 mentions: a linear
classifier on the feature before the L2 norm, through a batch normalisation (the "BNNeck" of Luo
et al., Bag of Tricks for person re-ID, 2019).  Retrieval still uses the L2-normalised embedding.

Why not a (scaled cosine) classifier on the normalised embedding: from random weights, the 128-d
FC outputs of all clips share a large common part (on the synthetic set |mean x| = 4.8 against
|x| = 5.0, and the normalised embeddings of different clips have cosine 0.91-0.93), so their
directions barely differ, the logits barely differ between clips, and the gradient that reaches
x is divided by |x| and spent on that common part.  There the id loss stayed at chance (ln 24 =
3.18): 3.10 and 3.21 after the demo's 15 epochs with scales 4 and 16.  A batch normalisation
removes the common part and equalises the scale, so the classifier sees the differences between
clips from the first step, and its gradient flows into x directly: 0.33 after 15 epochs.  A plain linear layer on x (no
normalisation) let x grow without bound and diverged (9.3), and a scaled cosine classifier on
BatchNorm(x) learned more slowly (1.99).  The demo's figures: README, "Quick start".
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SoftmaxLoss(nn.Module):
    """Cross-entropy of a bias-free linear classifier on BatchNorm(feature).

    `feature` is the model's output before the L2 norm (STAOutput.feature); the BatchNorm has no
    shift (as BNNeck), so each id is a direction in the normalised space.  Needs batches of more
    than one sample in training (batch statistics).  `label_smoothing`: epsilon of the smoothed
    cross-entropy (Szegedy et al., 2016, Sec. 7): the target is 1 - epsilon on the true id plus
    epsilon / C on each of the C ids; the strong re-ID baselines use 0.1 (Luo et al., 2019).
    """

    takes = "feature"  # which STAOutput field the trainer passes

    def __init__(self, num_features: int, num_classes: int, label_smoothing: float = 0.0):
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(num_features, num_classes, bias=False)
        self.label_smoothing = check_label_smoothing("SoftmaxLoss", label_smoothing)

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        if inputs.dim() != 2 or inputs.shape[1] != self.bn.num_features:
            raise ValueError(f"SoftmaxLoss: inputs must have shape (B, {self.bn.num_features}), "
                             f"got {tuple(inputs.shape)}")
        logits = self.classifier(self.bn(inputs.float()))
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)


def check_label_smoothing(owner: str, epsilon: float) -> float:
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"{owner}: label_smoothing must be in [0, 1), got {epsilon}")
    return float(epsilon)
