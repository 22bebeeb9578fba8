"""Processes started by torchrun: the process group, each process's share of a list of work, and
the rows every process computed gathered back in the list's order.

    torchrun --nproc_per_node G -m stafast.evaluate ...                       # one machine, G processes
    torchrun --nnodes M --node_rank R --nproc_per_node G \\
             --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m stafast.evaluate ...   # M machines
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process.  Under torchrun with more than one process, the
    process group is started once: NCCL on the GPU LOCAL_RANK (made current first, and passed as
    device_id so the group binds to it), else gloo on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    if dist.is_initialized():
        device = (torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl"
                  else torch.device("cpu"))
        return dist.get_rank(), dist.get_world_size(), device
    return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def shard(costs, rank: int, world_size: int) -> slice:
    """This rank's contiguous share of items with `costs`: cuts at about equal cumulative cost."""
    total = np.concatenate([[0], np.cumsum(np.asarray(costs, dtype=np.float64))])
    cuts = np.searchsorted(total, total[-1] * np.arange(world_size + 1) / world_size, side="left")
    cuts[0], cuts[-1] = 0, len(total) - 1
    return slice(int(cuts[rank]), int(cuts[rank + 1]))


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every rank's float32 (n_rank, D) rows concatenated in rank order, on every rank (on the CPU).
    Ranks may hold different numbers of rows; one with none may pass any (0, d) tensor."""
    _, size = world()
    if size == 1:
        return rows
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    shape = torch.tensor([len(rows), rows.shape[1] if len(rows) else 0], device=device)
    shapes = [torch.empty_like(shape) for _ in range(size)]
    dist.all_gather(shapes, shape)
    counts, dim = [int(s[0]) for s in shapes], max(int(s[1]) for s in shapes)
    padded = torch.zeros(max(counts), dim, device=device)
    padded[:len(rows)] = rows.to(device, torch.float32)
    out = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(out, padded)
    return torch.cat([o[:n] for o, n in zip(out, counts)]).cpu()
