"""Optimizers and learning-rate schedules by name (--optimizer, --schedule), built from the TrainConfig.

OPTIMIZERS: name -> builder(params, cfg) -> torch.optim.Optimizer
SCHEDULES:  name -> builder(optimizer, cfg, epochs) -> torch.optim.lr_scheduler.LRScheduler, stepped
            once at the end of each epoch of a stage (`epochs`: the stage's); each stage starts its own

cfg is the run's TrainConfig, read by attribute: each entry's options are fields of TrainConfig.
Adding one is a builder and an entry here (its docstring is its --help text), with its option
fields in TrainConfig.  The paper's SGD and step schedule (Sec. 4.2) are the defaults.
"""
from __future__ import annotations

import torch


def sgd(params, cfg) -> torch.optim.Optimizer:
    """the paper's SGD, with --momentum and --weight-decay"""
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def step(optimizer: torch.optim.Optimizer, cfg, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """the paper's: --lr, then x0.1 after --lr-step of the stage's epochs"""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, [max(1, round(epochs * cfg.lr_step))], gamma=0.1)


OPTIMIZERS = {"sgd": sgd}
SCHEDULES = {"step": step}


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    """The optimizer cfg.optimizer (one of OPTIMIZERS: TrainConfig checks it) over `params`."""
    return OPTIMIZERS[cfg.optimizer](params, cfg)


def build_schedule(cfg, optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule cfg.schedule (one of SCHEDULES) of a stage of `epochs` epochs."""
    return SCHEDULES[cfg.schedule](optimizer, cfg, epochs)

