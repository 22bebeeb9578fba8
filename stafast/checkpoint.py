"""Checkpoints of stafast.train: written atomically, read back with their typed configuration.

A checkpoint is a dict saved with torch.save:
  config        TrainConfig.to_dict() of the run
  model_config  the STA constructor arguments of its stage (load_model builds the model from these)
  model, criterion, optimizer, scheduler   state dicts
  stage_index, stage, epoch, step, global_step   where the run is: `step` batches of epoch `epoch`
                (0-based) of stage `stages[stage_index]` are done; step 0 of epoch E means E epochs are
  epoch_losses  the loss sums of the steps done in the current epoch (for its mean)
  rng           torch / numpy / python / CUDA generator states
  metrics       the history written to metrics.json
"""
from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import torch

from .config import TrainConfig
from .models import STA, build_model, upgrade_state_dict

FORMAT = 2  # 1: the configuration saved as vars(argparse.Namespace) under "args"


def save_atomic(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`: a crash
    (even kill -9) mid-write leaves the previous checkpoint intact."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ckpt-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _legacy_config(args: dict, path: str) -> TrainConfig:
    """The TrainConfig of a format-1 checkpoint (argparse names; --no-enhance stored as no_enhance)."""
    known = {f for f in TrainConfig.__dataclass_fields__}
    d = {k: v for k, v in args.items() if k in known}
    if "no_enhance" in args:
        d["enhance"] = not args["no_enhance"]
    return TrainConfig.from_dict(d, source=path)


def load_checkpoint(path: str) -> dict:
    """A stafast.train checkpoint, with "config" as a TrainConfig; errors name the file and what is wrong."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist (expected a stafast.train checkpoint.pt)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise ValueError(f"{path} is not a stafast.train checkpoint (keys 'model' and 'model_config' expected)")
    if "config" in state:
        state["config"] = TrainConfig.from_dict(state["config"], source=path)
    elif "args" in state:
        state["config"] = _legacy_config(state.pop("args"), path)
    else:
        raise ValueError(f"{path}: a stafast.train checkpoint without its training configuration ('config')")
    return state


def load_model(path: str, device: str = "cpu") -> tuple[STA, dict]:
    """The model of a stafast.train checkpoint (in eval mode, on `device`) and the checkpoint
    (load_checkpoint's dict: its "config" holds frames, height, width... of the run)."""
    state = load_checkpoint(path)
    cfg = state["model_config"]
    heads = upgrade_state_dict(state["model"]).get("spatial.out_weight")
    if heads is not None and heads.shape[0] != cfg.get("num_heads", heads.shape[0]):
        raise ValueError(f"{path}: its weights have K={heads.shape[0]} spatial heads but its model_config says "
                         f"num_heads={cfg['num_heads']}")
    model = build_model(**cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the model its config describes ({cfg}): {e}") from None
    return model.to(device).eval(), state
