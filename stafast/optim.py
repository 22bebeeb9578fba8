"""Optimizers and learning-rate schedules by name (--optimizer, --schedule), built from the TrainConfig.

OPTIMIZERS: name -> builder(params, cfg) -> torch.optim.Optimizer
SCHEDULES:  name -> builder(optimizer, cfg, epochs) -> torch.optim.lr_scheduler.LRScheduler, stepped
            once at the end of each epoch of a stage (`epochs`: the stage's); each stage starts its own

cfg is the run's TrainConfig, read by attribute: each entry's options are fields of TrainConfig.
Adding one is a builder and an entry here (its docstring is its --help text), with its option
fields in TrainConfig.  The paper's SGD and step schedule (Sec. 4.2) are the defaults.  Any
schedule starts with --warmup-epochs of linear warmup when that is > 0 (build_schedule).
"""
from __future__ import annotations

import torch


def sgd(params, cfg) -> torch.optim.Optimizer:
    """the paper's SGD, with --momentum and --weight-decay"""
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def adam(params, cfg) -> torch.optim.Optimizer:
    """Adam (Kingma and Ba 2015) with --weight-decay as an L2 term, as the strong re-ID baselines use it"""
    params = list(params)
    # On a GPU its step count lives on the device (capturable), so a step never reads it back on the
    # host; elsewhere torch keeps the count on the host, which needs no device either.
    on_gpu = bool(params) and all(p.device.type == "cuda" for p in params)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, capturable=on_gpu)


def step(optimizer: torch.optim.Optimizer, cfg, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """the paper's: --lr, then x0.1 after --lr-step of the stage's epochs"""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, [max(1, round(epochs * cfg.lr_step))], gamma=0.1)


OPTIMIZERS = {"sgd": sgd, "adam": adam}
WARMUP_START = 0.1  # the warmup's first epoch runs at 0.1 x --lr, rising linearly (Luo et al. 2019: 3.5e-5 to 3.5e-4)
SCHEDULES = {"step": step}


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    """The optimizer cfg.optimizer (one of OPTIMIZERS: TrainConfig checks it) over `params`."""
    return OPTIMIZERS[cfg.optimizer](params, cfg)


def build_schedule(cfg, optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule cfg.schedule (one of SCHEDULES) of a stage of `epochs` epochs; with
    cfg.warmup_epochs W > 0, multiplied by a linear warmup: epoch e < W at (0.1 + 0.9 e / W) x."""
    schedule = SCHEDULES[cfg.schedule](optimizer, cfg, epochs)
    if not cfg.warmup_epochs:
        return schedule
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, WARMUP_START, 1.0, total_iters=cfg.warmup_epochs)
    return torch.optim.lr_scheduler.ChainedScheduler([schedule, warmup], optimizer)

