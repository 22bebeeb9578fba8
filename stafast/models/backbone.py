"""ResNet backbone, conv1..res5c (Sec. 3.2): frames (M, 3, H, W) -> feature maps (M, D, H/32, W/32).

Weights come from a local file (a torchvision state dict, e.g. resnet50-*.pth) or not at all;
nothing is ever downloaded.
"""
from __future__ import annotations

import os
import warnings

import torch
import torchvision
from torch import nn

ARCHS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}


def _load_weights(net: nn.Module, path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone weights file {path!r} does not exist; expected a torchvision "
                                "ResNet state dict (.pth) saved on this machine (stafast never downloads weights)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"backbone weights file {path!r} holds a {type(state).__name__}, expected a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"backbone weights file {path!r} does not match this ResNet: {e}") from None
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"backbone weights file {path!r} does not match this ResNet: "
                         f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")


class Backbone(nn.Module):
    """torchvision ResNet up to layer4 (the paper's res5c), optionally with last stride 1."""

    def __init__(self, arch: str = "resnet50", weights: str | None = None, last_stride: int = 2):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"backbone arch must be one of {sorted(ARCHS)}, got {arch!r}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        net = getattr(torchvision.models, arch)(weights=None)
        if weights is not None:
            _load_weights(net, weights)
        if last_stride == 1:  # a finer grid (16 x 8 at 256 x 128): more cells for the heads to choose from
            block = net.layer4[0]
            (block.conv2 if hasattr(block, "conv3") else block.conv1).stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                  net.layer1, net.layer2, net.layer3, net.layer4)
        self.out_channels = ARCHS[arch]
        self.pretrained = weights is not None

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.body(frames)


def warn_random_init(arch: str) -> None:
    warnings.warn(f"{arch} backbone starts from random weights (no --backbone-weights file): expect rank-1 far "
                  "below the paper's (which fine-tunes an ImageNet + image re-ID pretrained ResNet-50)",
                  UserWarning, stacklevel=2)
