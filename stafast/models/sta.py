"""The spatiotemporal attention network (Sec. 3, Fig. 2), built from the blocks of stafast.nn.

clips (B, N, 3, H, W) -> backbone f (B*N, L, D) -> K spatial heads (Eq. 1) -> softmax + pooling
(Eqs. 2-3) -> frame enhancement (Eq. 4, supplementary Eqs. 1-4) -> temporal attention
(Eqs. 11-13, softmax over frames) or average / max pooling -> concat K parts (Eq. 15) ->
FC(128) -> L2 norm.  The diversity penalty (Eq. 9 or 10) of the spatial attention is returned
for the loss; its weight belongs to the training loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import DiversityPenalty, FrameEnhancement, SpatialAttention, TemporalAttention
from .backbone import Backbone

SPATIAL = ("attention", "none")
TEMPORAL = ("attention", "avg", "max")
DIVERSITY = ("hellinger", "l2", "none")
ENHANCE_SCALES = ("sqrt", "none")

# Table 1 rows as constructor arguments (Ind = stage 4 of the schedule, not an architecture).
ABLATIONS = {
    "baseline": dict(spatial="none", diversity="none", temporal="avg", enhance=False),
    "spaatn": dict(spatial="attention", diversity="none", temporal="avg"),
    "spaatn+q'": dict(spatial="attention", diversity="l2", temporal="avg"),
    "spaatn+q": dict(spatial="attention", diversity="hellinger", temporal="avg"),
    "spaatn+q+maxpool": dict(spatial="attention", diversity="hellinger", temporal="max"),
    "spaatn+q+temattn": dict(spatial="attention", diversity="hellinger", temporal="attention"),
}


@dataclass
class STAOutput:
    embedding: Tensor        # (B, embed_dim), L2-normalised (Eq. 15 -> FC -> norm)
    diversity: Tensor        # scalar: mean over frames of Q (Eq. 9) or Q' (Eq. 10); 0 if off
    spatial: Tensor | None   # (B, N, K, L) receptive fields (Eq. 2); None for the baseline
    temporal: Tensor | None  # (B, N, K) temporal weights (Eq. 12); None unless temporal attention
    grid: tuple[int, int]    # (H, W) of the feature grid, L = H * W
    feature: Tensor          # (B, embed_dim), the FC output before the L2 norm


class STA(nn.Module):
    """Diversity-regularised spatiotemporal attention network.

    Args:
        arch, backbone_weights, last_stride: the ResNet (see Backbone); weights from a local file.
        num_frames: N frames per clip (the temporal prior Psi is N x N).
        num_heads: K spatial attention models (Table 2: 1, 2, 4, 6, 8).
        hidden: d of Eq. 1.
        spatial: "attention" (Eqs. 1-3) or "none" (Table 1 baseline: global average pooling, K = 1).
        diversity: "hellinger" (Q, Eq. 9), "l2" (Q', Eq. 10) or "none".
        enhance: the frame enhancement E of Eq. 4 (supplementary Eqs. 1-4).
        enhance_sigma: sigma of supplementary Eq. 2.
        enhance_scale: "sqrt" multiplies X X^T by 1/sqrt(D) (raw 2048-d dot products saturate the
            softmax), "none" follows the supplementary literally.
        temporal: "attention" (Eqs. 11-13 with a softmax over frames), "avg" or "max".
        embed_dim: size of the final L2-normalised embedding (128 in the paper).
    """

    def __init__(self, arch: str = "resnet50", backbone_weights: str | None = None, last_stride: int = 2,
                 num_frames: int = 6, num_heads: int = 6, hidden: int = 256, spatial: str = "attention",
                 diversity: str = "hellinger", enhance: bool = True, enhance_sigma: float = 1.0,
                 enhance_scale: str = "sqrt", temporal: str = "attention", embed_dim: int = 128):
        super().__init__()
        for name, value, options in (("spatial", spatial, SPATIAL), ("temporal", temporal, TEMPORAL),
                                     ("diversity", diversity, DIVERSITY), ("enhance_scale", enhance_scale, ENHANCE_SCALES)):
            if value not in options:
                raise ValueError(f"STA: {name} must be one of {options}, got {value!r}")
        if num_heads < 1 or num_frames < 1 or hidden < 1 or embed_dim < 1:
            raise ValueError(f"STA: num_heads, num_frames, hidden and embed_dim must be >= 1, got "
                             f"{num_heads}, {num_frames}, {hidden}, {embed_dim}")
        self.backbone = Backbone(arch, backbone_weights, last_stride)
        d_feat = self.backbone.out_channels
        self.spatial_mode, self.temporal_mode, self.diversity_kind = spatial, temporal, diversity
        self.num_frames = num_frames
        self.num_heads = k = num_heads if spatial == "attention" else 1
        self.feat_dim = d_feat
        # The blocks of stafast.nn, None where the configuration leaves one out.
        self.spatial = SpatialAttention(d_feat, k, hidden) if spatial == "attention" else None        # Eqs. 1-3
        self.diversity = DiversityPenalty(diversity) if self.spatial is not None and diversity != "none" else None
        self.enhance = FrameEnhancement(num_frames, d_feat, enhance_sigma, enhance_scale) if enhance else None  # Eq. 4
        self.temporal = TemporalAttention(k, d_feat) if temporal == "attention" else None             # Eqs. 11-13
        self.embed = nn.Linear(k * d_feat, embed_dim)  # Eq. 15 -> FC(128)
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)

    def forward(self, clips: Tensor) -> STAOutput:
        if clips.dim() != 5 or clips.shape[2] != 3:
            raise ValueError(f"STA expects clips of shape (B, N, 3, H, W), got {tuple(clips.shape)}")
        b, n = clips.shape[:2]
        if self.enhance is not None and n != self.num_frames:
            raise ValueError(f"STA was built for num_frames={self.num_frames} (the N x N enhancement prior) "
                             f"but got clips with N={n}; shape {tuple(clips.shape)}")
        return self.head(self.backbone(clips.flatten(0, 1)), b, n)

    def head(self, fmap: Tensor, b: int, n: int) -> STAOutput:
        """Everything after the backbone: feature maps (B*N, D, h, w) of B clips x N frames -> output."""
        grid = tuple(fmap.shape[-2:])
        f = fmap.flatten(2).transpose(1, 2)                            # (B*N, L, D)
        diversity = f.new_zeros((), dtype=torch.float32)
        if self.spatial is not None:
            pooled, attn = self.spatial(f)                              # Eqs. 1-3
            if self.diversity is not None:
                diversity = self.diversity(attn)                        # Eqs. 9-10
            spatial = attn.view(b, n, self.num_heads, -1)
        else:
            pooled, spatial = f.mean(dim=1, keepdim=True), None
        x = pooled.view(b, n, self.num_heads, self.feat_dim)            # (B, N, K, D)
        if self.enhance is not None:
            x = self.enhance(x)                                         # Eq. 4
        temporal = None
        if self.temporal is not None:
            clip, temporal = self.temporal(x)                           # Eqs. 11-13
        elif self.temporal_mode == "avg":
            clip = x.mean(dim=1)
        else:
            clip = x.amax(dim=1)
        feature = self.embed(clip.flatten(1)).float()                   # Eq. 15, FC
        return STAOutput(F.normalize(feature, dim=1), diversity, spatial, temporal, grid, feature)  # L2 norm


# The parameter names of checkpoints written before STA was built from stafast.nn -> the current ones.
LEGACY_NAMES = {"att_hidden": "spatial.hidden", "att_out_weight": "spatial.out_weight",
                "att_out_bias": "spatial.out_bias", "enhance_decay": "enhance.decay",
                "enhance_weight": "enhance.weight", "enhance_bias": "enhance.bias", "enhance_fc": "enhance.fc",
                "temporal_weight": "temporal.weight", "temporal_bias": "temporal.bias"}


def _current_name(key: str, prefix: str = "") -> str:
    if not key.startswith(prefix):
        return key
    head, dot, rest = key[len(prefix):].partition(".")
    return prefix + LEGACY_NAMES[head] + dot + rest if head in LEGACY_NAMES else key


def upgrade_state_dict(state_dict: dict, prefix: str = "") -> dict:
    """A copy of an STA state dict with the names of older checkpoints (att_hidden.*,
    att_out_weight, att_out_bias, enhance_decay, enhance_weight, enhance_bias, enhance_fc.*,
    temporal_weight, temporal_bias) renamed as in `LEGACY_NAMES` (spatial.hidden.*,
    spatial.out_weight, ..., enhance.fc.*, temporal.weight, ...); current names pass unchanged.
    `prefix`: where the STA sits in the state dict (e.g. "module." under DistributedDataParallel).
    STA.load_state_dict does this by itself; the function is for reading or converting a
    checkpoint file without building the model."""
    out = type(state_dict)((_current_name(k, prefix), v) for k, v in state_dict.items())
    if hasattr(state_dict, "_metadata"):
        out._metadata = state_dict._metadata
    return out


def _rename_legacy_keys(module, state_dict, prefix, *args):
    """load_state_dict pre-hook: renames the legacy keys in place (load_state_dict works on its own copy)."""
    for key in list(state_dict):
        new = _current_name(key, prefix)
        if new != key:
            state_dict[new] = state_dict.pop(key)


def build_model(ablation: str | None = None, **kwargs) -> STA:
    """STA with the settings of a Table 1 row (`ABLATIONS`) overridden by `kwargs`."""
    if ablation is not None:
        if ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation {ablation!r}; expected one of {sorted(ABLATIONS)}")
        kwargs = {**ABLATIONS[ablation], **kwargs}
    return STA(**kwargs)
