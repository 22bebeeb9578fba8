"""Forward/backward demo of the STA model on synthetic clips (the main job until training lands).

    python -m stafast.demo [--steps 5] [--arch resnet18] [--height 128 --width 64]

Builds the full model (K spatial heads, Hellinger diversity, frame enhancement, temporal
attention), runs SGD steps of OIM + diversity on random clips of a few ids, and prints the loss,
the diversity penalty and which ops backend ran.
"""
from __future__ import annotations

import argparse
import time

import torch

from stafast import ops
from stafast.losses import OIMLoss
from stafast.models import STA


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--clips", type=int, default=8, help="B clips per batch")
    p.add_argument("--frames", type=int, default=6, help="N frames per clip")
    p.add_argument("--heads", type=int, default=6, help="K spatial heads")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--ids", type=int, default=4)
    p.add_argument("--diversity-weight", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = STA(args.arch, num_frames=args.frames, num_heads=args.heads).to(device)
    criterion = OIMLoss(128, args.ids).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    # Each id gets its own fixed appearance plus noise, so the loss has something to learn.
    protos = torch.randn(args.ids, 1, 3, args.height, args.width, device=device)
    pids = torch.arange(args.clips, device=device) % args.ids
    print(f"stafast demo: {args.arch}, B={args.clips} N={args.frames} K={args.heads} "
          f"{args.height}x{args.width}, device={device}, ops backends here: {ops.available_backends(device)}")
    losses = []
    for step in range(args.steps):
        t0 = time.perf_counter()
        clips = protos[pids] + 0.5 * torch.randn(args.clips, args.frames, 3, args.height, args.width, device=device)
        out = model(clips)
        oim = criterion(out.embedding, pids)
        loss = oim + args.diversity_weight * out.diversity
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        print(f"step {step}: loss {loss.item():.4f} (OIM {oim.item():.4f}, diversity Q {out.diversity.item():.4f}) "
              f"{args.clips / (time.perf_counter() - t0):.1f} clips/s")
    print(f"embedding {tuple(out.embedding.shape)}, receptive fields {tuple(out.spatial.shape)} over a "
          f"{out.grid[0]}x{out.grid[1]} grid, temporal weights {tuple(out.temporal.shape)}")
    return {"losses": losses}


if __name__ == "__main__":
    main()
