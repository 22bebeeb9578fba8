"""Clip batches for training and evaluation: the torch DataLoader path and the choice of pipeline.

Every pipeline yields dicts {"clips": float32 (B, N, 3, H, W) normalised with ImageNet
statistics, "pids": (B,), "camids": (B,), "bad_frames": int}; in "all" mode B is the C clips of
one tracklet.  `build_loader(..., pipeline="auto")` uses DALI when it is installed and the torch
DataLoader otherwise; both read the same frames for the same ClipPlan (see plan.py).
"""
from __future__ import annotations

import multiprocessing

import torch

from .datasets import DatasetError, is_video
from .frames import read_clip, to_model_input
from .plan import ClipPlan, check_start
from .workers import reap_at_exit, start_worker




class ClipDataset(torch.utils.data.Dataset):
    """Samples of a ClipPlan from position `start` of the epoch on, decoded with Pillow (frame
    files) or PyAV (video files).  on_error="raise" stops at the first unreadable frame with its
    path; "skip" replaces it by the nearest readable frame of its tracklet and counts it."""

    def __init__(self, plan: ClipPlan, height: int = 256, width: int = 128, on_error: str = "raise"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        plan.augment.check_size(height, width)
        self.plan, self.height, self.width, self.on_error = plan, height, width, on_error
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return max(0, len(self.plan.order(self.epoch)) - self.start)

    def __getitem__(self, index: int) -> dict:
        t, idx, augment = self.plan.sample(self.epoch, self.start + index)
        frames, bad = read_clip(t, idx, self.on_error)
        clip = to_model_input(frames, self.height, self.width, augment)
        clip = clip.view(*idx.shape, 3, self.height, self.width)
        return {"clips": clip, "pids": t.pid, "camids": t.camid, "bad_frames": bad}


def _collate(samples: list[dict]) -> dict:
    if samples[0]["clips"].dim() == 5:  # "all" mode: one tracklet's C clips
        (s,) = samples
        c = s["clips"].shape[0]
        return {"clips": s["clips"], "pids": torch.full((c,), s["pids"]), "camids": torch.full((c,), s["camids"]),
                "bad_frames": s["bad_frames"]}
    return {"clips": torch.stack([s["clips"] for s in samples]),
            "pids": torch.tensor([s["pids"] for s in samples]),
            "camids": torch.tensor([s["camids"] for s in samples]),
            "bad_frames": sum(s["bad_frames"] for s in samples)}


class TorchClipLoader:
    """The torch DataLoader path: `set_epoch(epoch, start)`, then iterate over the batches from `start` on.

    `len()` counts every batch of the epoch.  Positions before `start` are never decoded: the
    plan gives any position directly, which is how a resumed run continues mid-epoch.
    """

    def __init__(self, plan: ClipPlan, batch_size: int, height: int = 256, width: int = 128, workers: int = 2,
                 on_error: str = "raise", drop_last: bool | None = None, pin_memory: bool = False):
        self.dataset = ClipDataset(plan, height, width, on_error)
        self.batch_size = 1 if plan.mode == "all" else batch_size
        self.drop_last = (plan.mode == "train") if drop_last is None else drop_last
        self.workers, self.pin_memory = workers, pin_memory
        self.epoch, self.start = 0, 0
        self.bad_frames = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, check_start(start, self._batches(epoch))

    def _batches(self, epoch: int) -> int:
        n = len(self.dataset.plan.order(epoch))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return self._batches(self.epoch)

    def __iter__(self):
        self.dataset.set_epoch(self.epoch, self.start * self.batch_size)
        self.start = 0  # the next pass over this epoch starts at its beginning
        # A generator of the loader's own: the workers' seeds then come from (seed, epoch), not from
        # the global torch RNG, so a resumed run draws the same model initialisations as an unbroken one.
        generator = torch.Generator().manual_seed(self.dataset.plan.seed * 100_003 + self.epoch)
        if self.workers:
            reap_at_exit()
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False,
                                             num_workers=self.workers, collate_fn=_collate, drop_last=self.drop_last,
                                             persistent_workers=False, pin_memory=self.pin_memory, generator=generator,
                                             multiprocessing_context=worker_context(self.dataset.plan, self.workers),
                                             worker_init_fn=start_worker)
        try:
            for batch in loader:
                self.bad_frames += batch["bad_frames"]
                yield batch
        except DatasetError as e:  # from a worker, torch puts the worker's traceback into the message
            raise DatasetError(str(e).rpartition("DatasetError: ")[2].strip()) from e


def worker_context(plan, workers: int):
    """How the DataLoader starts its workers: forked (the default) for frame files; from a
    forkserver for video files.  Once a process has converted a frame with a multithreaded
    swscale (PyAV >= 19 with FFmpeg 9 does by default, for any conversion), a child forked from
    it blocks in its own first conversion.  The forkserver is a fresh process that has imported
    this module (torch, not PyAV), so workers still start without importing torch each."""
    if workers == 0 or not is_video(plan.tracklets):
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # takes effect when the server starts, once per process
    return context


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        return True
    except ImportError:
        return False


def _dali_loader(plan, batch_size, height, width, workers, on_error, device, start_epoch, start):
    from .dali import DALIClipLoader
    return DALIClipLoader(plan, batch_size, height, width, workers=workers, on_error=on_error, device=device,
                          start_epoch=start_epoch, start=start)


def _torch_loader(plan, batch_size, height, width, workers, on_error, device, start_epoch, start):
    loader = TorchClipLoader(plan, batch_size, height, width, workers, on_error,
                             pin_memory=torch.device(device).type == "cuda")
    loader.set_epoch(start_epoch, start)
    return loader


LOADERS = {"dali": _dali_loader, "torch": _torch_loader}  # pipeline name -> builder of its loader
PIPELINES = ("auto", *LOADERS)


def auto_pipeline(plan: ClipPlan, device: str) -> str:
    """"dali" when it is installed and takes `plan` (not "all" mode, whose variable clip counts per
    tracklet the torch path handles; a video codec DALI decodes on this device), else "torch"."""
    from .dali import dali_decodes
    dali = dali_available() and plan.mode != "all" and dali_decodes(plan, torch.device(device).type == "cuda") is None
    return "dali" if dali else "torch"


def build_loader(plan: ClipPlan, batch_size: int, height: int = 256, width: int = 128, pipeline: str = "auto",
                 workers: int = 2, on_error: str = "raise", device: str = "cpu", start_epoch: int = 0,
                 start: int = 0):
    """A clip loader for `plan`, set to batch `start` of epoch `start_epoch`, from the pipeline
    LOADERS[pipeline], or with "auto" the one auto_pipeline picks.  On a CUDA `device` DALI decodes
    on the GPU ("mixed") and the torch path pins its batches for asynchronous copies."""
    if pipeline != "auto" and pipeline not in LOADERS:
        raise ValueError(f"pipeline must be one of {('auto', *LOADERS)}, got {pipeline!r}")
    if pipeline == "auto":
        pipeline = auto_pipeline(plan, device)
    return LOADERS[pipeline](plan, batch_size, height, width, workers, on_error, device, start_epoch, start)
