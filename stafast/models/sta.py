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

from ..nn import ENHANCE_SCALES, DiversityPenalty, FrameEnhancement, SpatialAttention, TemporalAttention
from ..ops._checks import choice
from ..ops.diversity_penalty import KINDS
from .backbone import Backbone

SPATIAL_POOLINGS = ("attention", "avg")        # Eqs. 1-3, or Table 1's baseline: global average pooling, K = 1
TEMPORAL_POOLINGS = ("attention", "avg", "max")  # Eqs. 11-13, or average / max over the frames
DIVERSITY_KINDS = (*KINDS, "none")               # Q (Eq. 9), Q' (Eq. 10), or no penalty

# Table 1 rows as STA settings (Ind = stage 4 of the schedule, not an architecture).  The keys are
# the names of both the STA arguments and the TrainConfig fields, so that one row applies to both.
ABLATIONS = {
    "baseline": dict(spatial_pooling="avg", diversity_kind="none", temporal_pooling="avg", enhance=False),
    "spaatn": dict(spatial_pooling="attention", diversity_kind="none", temporal_pooling="avg"),
    "spaatn+q'": dict(spatial_pooling="attention", diversity_kind="l2", temporal_pooling="avg"),
    "spaatn+q": dict(spatial_pooling="attention", diversity_kind="hellinger", temporal_pooling="avg"),
    "spaatn+q+maxpool": dict(spatial_pooling="attention", diversity_kind="hellinger", temporal_pooling="max"),
    "spaatn+q+temattn": dict(spatial_pooling="attention", diversity_kind="hellinger", temporal_pooling="attention"),
}


@dataclass
class STAOutput:
    embedding: Tensor                # (B, embed_dim), L2-normalised (Eq. 15 -> FC -> norm)
    feature: Tensor                  # (B, embed_dim), the FC output before the L2 norm
    diversity_loss: Tensor           # scalar: mean over frames of Q (Eq. 9) or Q' (Eq. 10); 0 if off
    attention_maps: Tensor | None    # (B, N, K, L) receptive fields (Eq. 2); None for the baseline
    temporal_weights: Tensor | None  # (B, N, K) temporal weights (Eq. 12); None unless temporal attention
    grid: tuple[int, int]            # (H, W) of the feature grid, L = H * W


class STA(nn.Module):
    """Diversity-regularised spatiotemporal attention network.

    Args:
        arch, backbone_weights, last_stride: the ResNet (see Backbone); weights from a local file.
        num_frames: N frames per clip (the temporal prior Psi is N x N).
        num_heads: K spatial attention models (Table 2: 1, 2, 4, 6, 8).
        hidden: d of Eq. 1.
        spatial_pooling: "attention" (Eqs. 1-3) or "avg" (Table 1 baseline: global average pooling, K = 1).
        diversity_kind: "hellinger" (Q, Eq. 9), "l2" (Q', Eq. 10) or "none".
        enhance: the frame enhancement E of Eq. 4 (supplementary Eqs. 1-4).
        enhance_sigma: sigma of supplementary Eq. 2.
        enhance_scale: "sqrt" multiplies X X^T by 1/sqrt(D) (raw 2048-d dot products saturate the
            softmax), "none" follows the supplementary literally.
        temporal_pooling: "attention" (Eqs. 11-13 with a softmax over frames), "avg" or "max".
        embed_dim: size of the final L2-normalised embedding (128 in the paper).

    The blocks (stafast.nn) are the submodules `spatial_attention`, `diversity_penalty`,
    `frame_enhancement` and `temporal_attention`, each None where the settings leave it out.
    """

    def __init__(self, arch: str = "resnet50", backbone_weights: str | None = None, last_stride: int = 2,
                 num_frames: int = 6, num_heads: int = 6, hidden: int = 256, spatial_pooling: str = "attention",
                 diversity_kind: str = "hellinger", enhance: bool = True, enhance_sigma: float = 1.0,
                 enhance_scale: str = "sqrt", temporal_pooling: str = "attention", embed_dim: int = 128):
        super().__init__()
        choice("STA", "spatial_pooling", spatial_pooling, SPATIAL_POOLINGS)
        choice("STA", "temporal_pooling", temporal_pooling, TEMPORAL_POOLINGS)
        choice("STA", "diversity_kind", diversity_kind, DIVERSITY_KINDS)
        choice("STA", "enhance_scale", enhance_scale, ENHANCE_SCALES)
        if num_heads < 1 or num_frames < 1 or hidden < 1 or embed_dim < 1:
            raise ValueError(f"STA: num_heads, num_frames, hidden and embed_dim must be >= 1, got "
                             f"{num_heads}, {num_frames}, {hidden}, {embed_dim}")
        self.backbone = Backbone(arch, backbone_weights, last_stride)
        d_feat = self.backbone.out_channels
        self.spatial_pooling, self.temporal_pooling, self.diversity_kind = spatial_pooling, temporal_pooling, diversity_kind
        self.num_frames = num_frames
        self.num_heads = k = num_heads if spatial_pooling == "attention" else 1
        self.feat_dim = d_feat
        attention = spatial_pooling == "attention"
        self.spatial_attention = SpatialAttention(d_feat, k, hidden) if attention else None              # Eqs. 1-3
        self.diversity_penalty = DiversityPenalty(diversity_kind) if attention and diversity_kind != "none" else None
        self.frame_enhancement = FrameEnhancement(num_frames, d_feat, enhance_sigma, enhance_scale) if enhance else None
        self.temporal_attention = TemporalAttention(k, d_feat) if temporal_pooling == "attention" else None  # Eqs. 11-13
        self.embed = nn.Linear(k * d_feat, embed_dim)  # Eq. 15 -> FC(128)

    def forward(self, clips: Tensor) -> STAOutput:
        if clips.dim() != 5 or clips.shape[2] != 3:
            raise ValueError(f"STA expects clips of shape (B, N, 3, H, W), got {tuple(clips.shape)}")
        b, n = clips.shape[:2]
        if self.frame_enhancement is not None and n != self.num_frames:
            raise ValueError(f"STA was built for num_frames={self.num_frames} (the N x N enhancement prior) "
                             f"but got clips with N={n}; shape {tuple(clips.shape)}")
        return self.head(self.backbone(clips.flatten(0, 1)), b, n)

    def head(self, fmap: Tensor, b: int, n: int) -> STAOutput:
        """Everything after the backbone: feature maps (B*N, D, h, w) of B clips x N frames -> output."""
        grid = tuple(fmap.shape[-2:])
        f = fmap.flatten(2).transpose(1, 2)                            # (B*N, L, D)
        out_dtype = torch.promote_types(f.dtype, torch.float32)  # float32 for 16-bit (autocast), else f's
        diversity_loss = f.new_zeros((), dtype=out_dtype)
        if self.spatial_attention is not None:
            pooled, attn = self.spatial_attention(f)                    # Eqs. 1-3
            if self.diversity_penalty is not None:
                diversity_loss = self.diversity_penalty(attn)           # Eqs. 9-10
            attention_maps = attn.view(b, n, self.num_heads, -1)
        else:
            pooled, attention_maps = f.mean(dim=1, keepdim=True), None
        x = pooled.view(b, n, self.num_heads, self.feat_dim)            # (B, N, K, D)
        if self.frame_enhancement is not None:
            x = self.frame_enhancement(x)                               # Eq. 4
        temporal_weights = None
        if self.temporal_attention is not None:
            clip, temporal_weights = self.temporal_attention(x)         # Eqs. 11-13
        elif self.temporal_pooling == "avg":
            clip = x.mean(dim=1)
        else:
            clip = x.amax(dim=1)
        feature = self.embed(clip.flatten(1)).to(out_dtype)             # Eq. 15, FC
        return STAOutput(F.normalize(feature, dim=1), feature, diversity_loss, attention_maps,  # L2 norm
                         temporal_weights, grid)


def with_ablation(ablation: str | None, settings: dict) -> dict:
    """`settings` with the fields of Table 1 row `ablation` (ABLATIONS) filled in.  The one rule for an
    ablation and explicit settings, in build_model and TrainConfig alike: the row sets its fields, an
    explicit setting may repeat a row's value but not contradict it (ValueError naming both)."""
    if ablation is None:
        return dict(settings)
    choice("STA", "ablation", ablation, tuple(ABLATIONS))
    row = ABLATIONS[ablation]
    clashes = [f"{k}={settings[k]!r}" for k in row if k in settings and settings[k] != row[k]]
    if clashes:
        raise ValueError(f"ablation {ablation!r} (a Table 1 row) sets {row}, which {', '.join(clashes)} contradicts: "
                         "drop the ablation or the contradicting setting")
    return {**settings, **row}


def build_model(ablation: str | None = None, **kwargs) -> STA:
    """STA with the settings of Table 1 row `ablation` (ABLATIONS) and `kwargs` (see with_ablation)."""
    return STA(**with_ablation(ablation, kwargs))
