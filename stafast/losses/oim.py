"""Online Instance Matching loss (Xiao et al., CVPR 2017), the loss of Sec. 3.5.

A lookup table (LUT) holds one L2-normalised row per training identity, and an optional
circular queue (CQ) holds features of unlabeled samples (label -1).  Logits are
scalar * x [LUT; CQ]^T, followed by cross-entropy over the labeled samples.  In backward,
after the gradient is taken against the old table, each labeled id's row moves towards its
features: v <- m v + (1 - m) x, then v <- v / ||v||.

Defaults (open-reid's OIM): scalar 30 (logits scaled by 1/temperature, T = 1/30), momentum 0.5.
Several samples of one id in a batch update its row once, with their mean feature (instead of
one update per sample in batch order: same fixed point, order-independent, vectorised).
Unlabeled samples enter the queue in batch order, oldest overwritten first.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .softmax import check_label_smoothing


class _OIMLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, targets, lut, queue, queue_ptr, momentum):
        ctx.save_for_backward(inputs, targets)
        ctx.tables = (lut, queue, queue_ptr)
        ctx.momentum = momentum
        return inputs.mm(torch.cat([lut, queue]).t().to(inputs.dtype))

    @staticmethod
    def backward(ctx, grad_output):
        inputs, targets = ctx.saved_tensors
        lut, queue, queue_ptr = ctx.tables
        grad_inputs = None
        if ctx.needs_input_grad[0]:  # against the old table
            grad_inputs = grad_output.mm(torch.cat([lut, queue]).to(grad_output.dtype))
        with torch.no_grad():
            update_tables(lut, queue, queue_ptr, inputs.detach(), targets, ctx.momentum)
        return grad_inputs, None, None, None, None, None


@torch.no_grad()
def update_tables(lut: Tensor, queue: Tensor, queue_ptr: Tensor, inputs: Tensor, targets: Tensor,
                  momentum: float) -> None:
    """Momentum update of the LUT rows of labeled ids; push unlabeled features into the queue.

    The LUT update has no host sync and no data-dependent shape (per-id sums over the whole table,
    rows without a sample kept by a mask), so a training step with OIM can be captured on a GPU.
    The per-id sums are a product with the (batch x ids) one-hot matrix of the targets, in float64:
    a GEMM adds in the same order on every run, where index_add_ adds atomically on CUDA, in an order
    that changes from run to run, so DDP ranks' tables would drift apart in the low bits."""
    labeled = targets >= 0
    ids = torch.arange(lut.shape[0], device=lut.device)
    one_hot = (targets[:, None] == ids[None, :]).to(torch.float64)  # label -1 (unlabeled) matches no id
    sums = one_hot.t().mm(inputs.to(torch.float64)).to(lut.dtype)
    counts = one_hot.sum(0).to(lut.dtype)[:, None]
    moved = F.normalize(momentum * lut + (1 - momentum) * sums / counts.clamp(min=1), dim=1)
    lut.copy_(torch.where(counts > 0, moved, lut))
    size = queue.shape[0]
    if size:  # unlabeled samples: a data-dependent count, only when a queue is used
        unlabeled = inputs[~labeled][-size:]
        if len(unlabeled):
            idx = (queue_ptr + torch.arange(len(unlabeled), device=queue.device)) % size
            queue[idx] = F.normalize(unlabeled.to(queue.dtype), dim=1)
            queue_ptr.copy_((queue_ptr + len(unlabeled)) % size)


class OIMLoss(nn.Module):
    """OIM loss over `num_classes` identities on `num_features`-d L2-normalised features.

    Args:
        scalar: logit scale (1 / temperature); 10 to 30 are common.
        momentum: LUT update momentum (0.5 in the paper's setting).
        queue_size: slots of the circular queue for unlabeled samples (label -1); 0 disables it.
        label_smoothing: epsilon of the smoothed cross-entropy (Szegedy et al., 2016): the target puts
            1 - epsilon on the true id and spreads epsilon evenly over all the columns (LUT and queue).
    """

    takes = "embedding"  # which STAOutput field the trainer passes: the L2-normalised embedding

    def __init__(self, num_features: int, num_classes: int, scalar: float = 30.0, momentum: float = 0.5,
                 queue_size: int = 0, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"OIMLoss: momentum must be in [0, 1), got {momentum}")
        check_label_smoothing("OIMLoss", label_smoothing)
        self.num_features, self.num_classes = num_features, num_classes
        self.scalar, self.momentum, self.label_smoothing = float(scalar), float(momentum), float(label_smoothing)
        self.register_buffer("lut", torch.zeros(num_classes, num_features))
        self.register_buffer("queue", torch.zeros(queue_size, num_features))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        if inputs.dim() != 2 or inputs.shape[1] != self.num_features:
            raise ValueError(f"OIMLoss: inputs must have shape (B, {self.num_features}), got {tuple(inputs.shape)}")
        if targets.shape != inputs.shape[:1]:
            raise ValueError(f"OIMLoss: targets must have shape ({inputs.shape[0]},), got {tuple(targets.shape)}")
        if targets.device.type == "cpu" and not torch.compiler.is_compiling() and targets.numel() and \
                (targets.max() >= self.num_classes or targets.min() < -1):  # (on a GPU this check would sync)
            raise ValueError(f"OIMLoss: targets must be in [0, {self.num_classes}) or -1 (unlabeled), "
                             f"got range [{int(targets.min())}, {int(targets.max())}]")
        logits = _OIMLogits.apply(inputs, targets, self.lut, self.queue, self.queue_ptr, self.momentum)
        logits = logits * self.scalar
        # Queue columns are negatives only: CE over [LUT; CQ] with unlabeled rows ignored.
        return F.cross_entropy(logits.float(), targets, ignore_index=-1, label_smoothing=self.label_smoothing)
