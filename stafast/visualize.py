"""Seeing what the model does.

    python -m stafast.visualize attention --checkpoint C --tracklet DIR_OR_VIDEO [--out attention.png]
    python -m stafast.visualize attention --checkpoint C --dataset mars --root R [--index 0]
    python -m stafast.visualize ranks --checkpoint C --dataset mars --root R [--queries 6 --topk 8]

attention: the K receptive fields (Eq. 2) over each sampled frame as heat maps, one column per
head (the paper's Fig. 3), with each frame's temporal weight per head (Eq. 12, supplementary
Fig. 2) written under its heat map and drawn as an N x K matrix in the last panel.
ranks: for some queries, the top-k gallery tracklets (their middle frame) with green borders
for correct and red for wrong matches (same-id same-camera and junk items are left out, as in
evaluation), and the CMC curve in a second figure.  Figures are written with matplotlib's Agg
backend: no display needed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from . import cli  # noqa: E402
from .checkpoint import load_model  # noqa: E402
from .cli import option  # noqa: E402
from .config import split_option  # noqa: E402
from .data import (DATASET_NAMES, ClipPlan, DatasetError, Tracklet, VideoTracklet, build_loader,  # noqa: E402
                   default_protocol, load_dataset, protocol_attrs)
from .data.datasets import _sorted_frames  # noqa: E402
from .data.video import video_tracklet  # noqa: E402
from .data.frames import denormalise  # noqa: E402
from .data.plan import NO_AUGMENT  # noqa: E402
from .evaluate import extract  # noqa: E402
from .metrics import PROTOCOLS, evaluate  # noqa: E402


def tracklet_from_dir(folder: str) -> Tracklet | VideoTracklet:
    """A folder of frames, or a video file, as one tracklet."""
    if os.path.isfile(folder):
        return video_tracklet(folder)
    if not os.path.isdir(folder):
        raise DatasetError(f"tracklet folder {folder} does not exist")
    return Tracklet(_sorted_frames(folder), -1, 0)


def tracklet_name(t) -> str:
    return os.path.basename(t.path if isinstance(t, VideoTracklet) else os.path.dirname(t.frames[0]))


def _image(clip_frame: torch.Tensor) -> np.ndarray:
    """Normalised (3, H, W) -> (H, W, 3) in [0, 1] for display."""
    return denormalise(clip_frame).permute(1, 2, 0).numpy()


@torch.no_grad()
def attention_figure(model, clip: torch.Tensor, out: str, title: str = "") -> int:
    """clip (N, 3, H, W) -> PNG at `out`; returns the number of panels."""
    model.eval()
    result = model(clip[None].to(next(model.parameters()).device))
    if result.attention_maps is None:
        raise ValueError("this model has no spatial attention (Table 1 baseline): nothing to draw")
    n, k = result.attention_maps.shape[1:3]
    gh, gw = result.grid
    h, w = clip.shape[-2:]
    maps = result.attention_maps[0].float().view(n * k, 1, gh, gw)
    maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False).view(n, k, h, w).cpu()
    temporal = result.temporal_weights[0].float().cpu().numpy() if result.temporal_weights is not None else None
    extra = 1 if temporal is not None else 0
    fig, axes = plt.subplots(n, k + 1 + extra, figsize=(1.1 * (k + 1 + extra), 1.9 * n), squeeze=False)
    for i in range(n):
        img = _image(clip[i])
        axes[i, 0].imshow(img)
        axes[i, 0].set_ylabel(f"frame {i + 1}", fontsize=7)
        for j in range(k):
            ax = axes[i, j + 1]
            ax.imshow(img)
            ax.imshow(maps[i, j].numpy(), cmap="jet", alpha=0.5)
            if i == 0:
                ax.set_title(f"head {j + 1}", fontsize=7)
            if temporal is not None:
                ax.set_xlabel(f"t={temporal[i, j]:.2f}", fontsize=6, labelpad=1)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("frame", fontsize=7)
    if temporal is not None:
        for i in range(1, n):
            axes[i, -1].remove()
        ax = axes[0, -1]
        ax.set_position([ax.get_position().x0, 0.1, ax.get_position().width, 0.8])
        ax.imshow(temporal, cmap="viridis", vmin=0, vmax=max(1e-6, float(temporal.max())), aspect="auto")
        ax.set_title("temporal\nweights", fontsize=7)
        ax.set_xlabel("head", fontsize=6)
        ax.set_ylabel("frame", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return n * (k + 1) + extra


def _middle_frame(t: Tracklet, height: int, width: int) -> np.ndarray:
    plan = ClipPlan([t], 1, "test")
    plan.sample = lambda epoch, pos: (t, np.array([len(t) // 2]), NO_AUGMENT)  # the middle frame
    batch = next(iter(build_loader(plan, 1, height, width, pipeline="torch", workers=0)))
    return _image(batch["clips"][0, 0])


def ranks_figure(model, dataset, cfg, out: str, cmc_out: str, queries: int = 6, topk: int = 8,
                 protocol: str = "official", device: str = "cpu", seed: int = 0) -> tuple[int, dict]:
    """Top-k ranked gallery tracklets for `queries` queries, and the CMC curve; returns (panels, metrics)."""
    n, h, w = cfg.frames, cfg.height, cfg.width
    qf, qp, qc = extract(model, dataset.query, n, h, w, device=device, pipeline="torch", workers=0, progress=False)
    gf, gp, gc = extract(model, dataset.gallery, n, h, w, device=device, pipeline="torch", workers=0, progress=False)
    dist = (2 - 2 * qf @ gf.t()).numpy()
    result = evaluate(dist, qp, gp, qc, gc, protocol, **protocol_attrs(dataset, protocol))
    chosen = np.random.default_rng(seed).choice(len(qp), size=min(queries, len(qp)), replace=False)
    fig, axes = plt.subplots(len(chosen), topk + 1, figsize=(1.0 * (topk + 1), 2.0 * len(chosen)), squeeze=False)
    for row, qi in enumerate(chosen):
        axes[row, 0].imshow(_middle_frame(dataset.query[qi], h, w))
        axes[row, 0].set_title(f"query id {qp[qi]}\ncam {qc[qi]}", fontsize=6)
        left_out = (gp == -1) | ((gp == qp[qi]) & (gc == qc[qi]))
        order = [g for g in np.argsort(dist[qi], kind="stable") if not left_out[g]][:topk]
        for col, g in enumerate(order, start=1):
            ax = axes[row, col]
            ax.imshow(_middle_frame(dataset.gallery[g], h, w))
            colour = "limegreen" if gp[g] == qp[qi] else "red"
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
            ax.set_title(f"{col}: id {gp[g]}", fontsize=6)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4, 3))
    ranks = np.arange(1, len(result["cmc"]) + 1)
    ax.plot(ranks, result["cmc"], marker=".", lw=1)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"CMC ({protocol}): rank-1 {result['cmc'][0]:.3f}, mAP {result['mAP']:.3f}", fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(cmc_out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return len(chosen) * (len(order) + 1) if len(chosen) else 0, result


@dataclass(kw_only=True)
class FigureConfig:
    checkpoint: str = option(help="a stafast.train checkpoint.pt")
    dataset: str | None = option(None, "draw from this dataset's query and gallery", choices=DATASET_NAMES)
    root: str | None = option(None, "its root (default: the checkpoint's)")
    split: int = split_option()
    protocol: str | None = option(None, "evaluation protocol (default: the dataset's leaderboard one)",
                                  choices=PROTOCOLS)


@dataclass(kw_only=True)
class AttentionConfig(FigureConfig):
    """The K receptive fields of each sampled frame of one tracklet, and the temporal weights."""
    tracklet: str | None = option(None, "a folder of frames or a video file (one tracklet)")
    index: int = option(0, "with --dataset: which query tracklet")
    out: str = option("attention.png", "the figure to write")


@dataclass(kw_only=True)
class RanksConfig(FigureConfig):
    """The top-k gallery tracklets of some queries, and the CMC curve."""
    queries: int = option(6, "how many queries (drawn at random, seed 0)")
    topk: int = option(8, "gallery tracklets per query")
    out: str = option("ranks.png", "the figure of ranked lists to write")
    cmc_out: str = option("cmc.png", "the CMC figure to write")


COMMANDS = {"attention": AttentionConfig, "ranks": RanksConfig}


def main(argv=None):
    a = cli.parse(COMMANDS, argv, module="stafast.visualize", description=__doc__)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, state = load_model(a.checkpoint, device)
    cfg = state["config"]
    if isinstance(a, AttentionConfig):
        if a.tracklet:
            t = tracklet_from_dir(a.tracklet)
        elif a.dataset:
            ds = load_dataset(a.dataset, a.root or cfg.root, a.split, a.protocol)
            if not 0 <= a.index < len(ds.query):
                raise ValueError(f"--index must be in 0..{len(ds.query) - 1}, got {a.index}")
            t = ds.query[a.index]
        else:
            cli.error(COMMANDS, "stafast.visualize", "attention needs --tracklet DIR or --dataset")
        plan = ClipPlan([t], cfg.frames, "test")
        clip = next(iter(build_loader(plan, 1, cfg.height, cfg.width, pipeline="torch", workers=0)))["clips"][0]
        panels = attention_figure(model, clip, a.out, tracklet_name(t))
        print(f"wrote {a.out} ({panels} panels)")
    else:
        if not a.dataset:
            cli.error(COMMANDS, "stafast.visualize", "ranks needs --dataset")
        protocol = a.protocol or default_protocol(a.dataset)
        ds = load_dataset(a.dataset, a.root or cfg.root, a.split, protocol)
        panels, result = ranks_figure(model, ds, cfg, a.out, a.cmc_out, a.queries, a.topk, protocol, device)
        print(f"wrote {a.out} ({panels} panels) and {a.cmc_out}: rank-1 {result['cmc'][0]:.3f}, mAP {result['mAP']:.3f}")


if __name__ == "__main__":
    cli.run(main, "stafast.visualize")
