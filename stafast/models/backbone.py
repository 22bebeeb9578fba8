"""ResNet backbone, conv1..res5c (Sec. 3.2): frames (M, 3, H, W) -> feature maps (M, D, H/32, W/32).

Weights: none (random), a local file (a torchvision ResNet state dict, e.g. resnet50-*.pth), or
"imagenet": torchvision's ImageNet weights for the arch through its weights API (the arch's
DEFAULT weights; an enum name such as "IMAGENET1K_V1" picks others).  torchvision downloads
them once into the torch hub cache ($TORCH_HOME/hub/checkpoints, default ~/.cache/torch/hub);
offline, the error names the file to place there.
"""
from __future__ import annotations

import os
import urllib.error
import urllib.parse
import warnings

import torch
import torchvision
from torch import nn

from ..ops._checks import choice

ARCHS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}  # name -> D, res5c's channels
LAST_STRIDES = (1, 2)  # stride of res5 (1: a grid twice as fine)


def torchvision_weights(arch: str, name: str):
    """The torchvision weights enum member `name` ("imagenet" = the arch's DEFAULT) of ResNet `arch`."""
    enum = torchvision.models.get_model_weights(arch)
    if name.lower() == "imagenet":
        return enum.DEFAULT
    try:
        return enum[name.upper()]
    except KeyError:
        raise ValueError(f"backbone weights {name!r}: not a file, 'imagenet', nor one of torchvision's {arch} "
                         f"weights {[w.name for w in enum]}") from None


def hub_file(weights) -> str:
    """Where torchvision keeps (and first looks for) the file of `weights`: the torch hub cache."""
    name = os.path.basename(urllib.parse.urlparse(weights.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", name)


def _download(arch: str, name: str) -> dict:
    weights = torchvision_weights(arch, name)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise FileNotFoundError(
            f"backbone weights {name!r} ({arch} {weights.name}): cannot download {weights.url} ({e}). Offline, "
            f"place that file at {hub_file(weights)} (the torch hub cache; set TORCH_HOME to move it), or pass "
            "--backbone-weights PATH to a local torchvision ResNet state dict") from None


def _load_weights(net: nn.Module, path: str, arch: str) -> None:
    if os.path.isfile(path):
        state = torch.load(path, map_location="cpu", weights_only=True)
    elif path.lower() == "imagenet" or path.upper() in {w.name for w in torchvision.models.get_model_weights(arch)}:
        state = _download(arch, path)
    else:
        raise FileNotFoundError(f"backbone weights file {path!r} does not exist; expected a torchvision ResNet state "
                                "dict (.pth) on this machine, or 'imagenet' for torchvision's ImageNet weights")
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
        choice("Backbone", "arch", arch, tuple(ARCHS))
        choice("Backbone", "last_stride", last_stride, LAST_STRIDES)
        net = getattr(torchvision.models, arch)(weights=None)
        if weights is not None:
            _load_weights(net, weights, arch)
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
    warnings.warn(f"{arch} backbone starts from random weights (no --backbone-weights): expect rank-1 far "
                  "below the paper's (which fine-tunes an ImageNet + image re-ID pretrained ResNet-50)",
                  UserWarning, stacklevel=2)
