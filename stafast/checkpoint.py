"""Checkpoints of stafast.train: written atomically, read back with their typed configuration.

A checkpoint is a dict saved with torch.save:
  format        FORMAT: which layout this is (load_checkpoint reads the formats in READERS)
  config        TrainConfig.to_dict() of the run
  model_config  the STA constructor arguments of its stage (load_model builds the model from these)
  model, criterion, optimizer, scheduler   state dicts
  stage_index, stage, epoch, step, global_step   where the run is: `step` batches of epoch `epoch`
                (0-based) of stage `stages[stage_index]` are done; step 0 of epoch E means E epochs are
  epoch_losses  {"sums": {loss name: sum}, "steps": n} of the steps done in the current epoch (its means)
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
from .errors import UserError
from .models import STA, build_model

# 3: the STA submodules spatial_attention, frame_enhancement, temporal_attention; model_config with
# spatial_pooling, diversity_kind, temporal_pooling (config fields of the same names).
# Formats 1 and 2 (before that renaming) were never released: they are refused with what to do.
FORMAT = 3


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be read, is no stafast.train checkpoint, or does not fit."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """No checkpoint file where one was expected."""


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


def _read_format3(state: dict, path: str) -> dict:
    try:
        state["config"] = TrainConfig.from_dict(state["config"], source=path)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    return state


READERS = {3: _read_format3}  # format -> the reader of its layout: a new format adds one entry


def load_checkpoint(path: str) -> dict:
    """A stafast.train checkpoint, with "config" as a TrainConfig; errors (CheckpointError) name the
    file and what is wrong."""
    if not os.path.isfile(path):
        raise CheckpointNotFound(f"checkpoint {path} does not exist (expected a stafast.train checkpoint.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds (zip, pickle, EOF) for what it cannot read
        reason = str(e).split(". ")[0].strip()  # torch's zip reader appends a paragraph of advice
        raise CheckpointError(f"{path} is not a readable checkpoint (a truncated file, or no torch.save file): "
                              f"{type(e).__name__}: {reason}") from e
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise CheckpointError(f"{path} is not a stafast.train checkpoint (keys 'model' and 'model_config' expected)")
    fmt = state.get("format")
    if fmt not in READERS:
        written = f"format {fmt}" if fmt is not None else "no format field: an unreleased layout from before format 3"
        raise CheckpointError(f"{path}: a stafast.train checkpoint of {written}; this version reads formats "
                              f"{sorted(READERS)} only. Train it again with this version (python -m stafast.train ...), "
                              "or use the stafast version that wrote it")
    return READERS[fmt](state, path)


def load_model(path: str, device: str = "cpu") -> tuple[STA, dict]:
    """The model of a stafast.train checkpoint (in eval mode, on `device`) and the checkpoint
    (load_checkpoint's dict: its "config" holds frames, height, width... of the run)."""
    state = load_checkpoint(path)
    cfg = state["model_config"]
    heads = state["model"].get("spatial_attention.out_weight")
    if heads is not None and heads.shape[0] != cfg.get("num_heads", heads.shape[0]):
        raise CheckpointError(f"{path}: its weights have K={heads.shape[0]} spatial heads but its model_config says "
                              f"num_heads={cfg['num_heads']}")
    model = build_model(**cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes ({cfg}): {e}") from None
    return model.to(device).eval(), state
