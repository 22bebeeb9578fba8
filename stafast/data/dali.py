"""The NVIDIA DALI pipeline: the same clips as the torch path (loader.py), decoded by DALI.

A parallel external source (Python worker processes, spawned: forking a process that already
runs threads, as torch's, can deadlock the children) reads encoded bytes from the ClipPlan, and
DALI decodes them ("mixed" on the GPU when a GPU is used, "cpu" otherwise), resizes linearly (no
antialias, half-pixel centres, as the torch path), augments whole clips as the plan says (crop
with fn.slice, flip with the mirror of fn.crop_mirror_normalize, erase with fn.erase, their
arguments per sample from the source: the torch path's clips to 1e-3 grey levels) and normalises:
- frame files: one DALI sample per frame, decoded by `fn.decoders.image` (nvJPEG on the GPU); a
  DALI batch holds B clips x N frames, which the loader reshapes to (B, N, 3, H, W);
- video files: one DALI sample per clip, the file's bytes with the N frame indices the plan
  samples, decoded by `fn.decoders.video` (NVDEC on the GPU; on the CPU, DALI's libavcodec takes
  VP8, VP9 and MJPEG only, see video.CPU_CODECS).  The decoder builds an index of the file's
  packets and walks the sampled frames in order: it decodes on from where it is, unless the next
  sampled frame lies more than 10 frames ahead in another keyframe group (then it seeks to that
  group's keyframe) or behind (a repeated frame of a tracklet shorter than N: it seeks back).
  So an intra-only stream (MJPEG) decodes the sampled frames and those between close ones, a
  VP9 clip with one keyframe decodes its frames up to the last sampled one; only the sampled
  frames are converted to RGB.  A batch is B sequences of N frames: (B, N, 3, H, W) directly.

An unreadable frame stops with a DatasetError naming its path (on_error="raise"), or is replaced
by the nearest readable frame of its tracklet and counted in `bad_frames` (on_error="skip"); for
video files that covers the frames past the end of a truncated file (video.readable_indices).
Damaged files that would crash DALI's decoders never reach them (dali_guard.py).  The worker
processes ignore SIGINT and SIGTERM (the main process decides what an interruption does) and end
within a fraction of a second when the main process is gone, however it ended (crash or SIGKILL
included).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..extras import require
from .dali_guard import image_bytes, video_bytes
from .datasets import DatasetError, is_video
from .frames import MEAN, STD, read_image, read_nearest
from .plan import ClipAugment, ClipPlan, check_start
from .video import CPU_CODECS, decode, readable_indices
from .workers import exit_with_parent, reap_at_exit, start_worker


def dali_decodes(plan: ClipPlan, gpu: bool) -> str | None:
    """None when DALI can decode the plan's tracklets on this device, else why not."""
    if not is_video(plan.tracklets) or gpu:
        return None
    other = next((t for t in plan.tracklets if t.codec not in CPU_CODECS), None)
    if other is None:
        return None
    return (f"DALI's CPU video decoder takes {'/'.join(CPU_CODECS)}, but {other.path} is {other.codec or 'unknown'}: "
            "decode it with the torch pipeline (PyAV) or on a GPU (NVDEC)")


def augment_arguments(augment: ClipAugment, names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """A clip's augmentation as the per-sample arguments of the pipeline's operators: the mirror
    flag, then for the plan's augmentation `names` the crop window's start (y, x) for fn.slice and
    the erased box's start and shape for fn.erase (empty: nothing erased)."""
    out = [np.array(int(augment.flip), dtype=np.int32)]
    if "crop" in names:
        out.append(np.array(augment.crop or (0, 0), dtype=np.int32))
    if "erase" in names:
        erase = np.array(augment.erase or (), dtype=np.float32).reshape(-1, 2)
        out += [erase[:1].ravel(), erase[1:].ravel()]
    return tuple(out)


class _FrameSource:
    """Per-sample callback of the parallel external source: must be picklable, stateless per call.
    One sample per frame: N samples make a clip."""

    def __init__(self, plan: ClipPlan, start_epoch: int, start: int, padded: int, on_error: str):
        self.plan, self.start_epoch, self.start, self.padded, self.on_error = plan, start_epoch, start, padded, on_error
        self.parent = os.getpid()

    def __setstate__(self, state):
        """Unpickled in each worker process as it starts."""
        self.__dict__.update(state)
        start_worker()
        exit_with_parent(self.parent)

    def samples_per_clip(self) -> int:
        return self.plan.n

    def __call__(self, info):
        epoch = self.start_epoch + info.epoch_idx
        position, slot = divmod(info.idx_in_epoch, self.samples_per_clip())
        if info.epoch_idx == 0:  # the first epoch may resume mid-way: its earlier positions are never read
            position += self.start
        if position >= self.padded:
            raise StopIteration
        length = len(self.plan.order(epoch))
        t, idx, augment = self.plan.sample(epoch, min(position, length - 1))  # the last test batch is padded
        data, bad = self._read(t, idx.ravel(), slot)
        return (*data, *augment_arguments(augment, self.plan.augment.names), np.array(t.pid, dtype=np.int64),
                np.array(t.camid, dtype=np.int64), np.array(bad, dtype=np.int32))

    def _read(self, t, idx, slot):
        data, bad = self._bytes(t.frames, int(idx[slot]))
        return (data,), bad

    def _bytes(self, frames, i):
        if self.on_error == "raise":
            return image_bytes(frames[i]), 0
        image, j = read_nearest(frames, i)  # full decode: only readable frames reach DALI in skip mode
        return image_bytes(frames[j], image), int(j != i)


class _ClipSource(_FrameSource):
    """One sample per clip of a video file: its bytes and the N frame indices to decode."""

    def samples_per_clip(self) -> int:
        return 1

    def _read(self, t, idx, slot):
        idx, bad = readable_indices(t, idx, self.on_error)
        return (video_bytes(t.path), idx.astype(np.int32)), bad


def cuda_device_id(device: str | torch.device) -> int | None:
    """The CUDA device index of `device` ("cuda" alone: the current device); None for a CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


class DALIClipLoader:
    """`set_epoch(epoch, start)`, then iterate over the batches from `start` on; `len()` counts
    every batch of the epoch.  The pipeline's workers follow DALI's own epoch count, so a pass that
    does not continue where the previous one ended rebuilds the pipeline."""

    def __init__(self, plan: ClipPlan, batch_size: int, height: int = 256, width: int = 128, workers: int = 2,
                 threads: int | None = None, on_error: str = "raise", device: str = "cpu", start_epoch: int = 0,
                 start: int = 0):
        require("nvidia.dali", "dali", "--pipeline dali")
        if plan.mode == "all":
            raise ValueError("the DALI pipeline takes train/test clips; use the torch path for all-frames mode")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        plan.augment.check_size(height, width)
        self.plan, self.batch_size, self.height, self.width = plan, batch_size, height, width
        # DALI's own threads (decoding on the CPU; on a GPU, the host part of nvJPEG): half the cores, 2 to 8
        threads = threads or max(2, min(8, (os.cpu_count() or 2) // 2))
        self.workers, self.threads, self.on_error = workers, threads, on_error
        self.gpu = torch.device(device).type == "cuda"
        self.device_id = cuda_device_id(device)  # DALI decodes there and the clips land there
        self.video = is_video(plan.tracklets)
        why_not = dali_decodes(plan, self.gpu)
        if why_not:
            raise DatasetError(why_not)
        self.samples_per_clip = 1 if self.video else plan.n
        self.drop_last = plan.mode == "train"
        self.bad_frames = 0
        self.set_epoch(start_epoch, start)
        self._build(start_epoch, start)

    def _batches(self, epoch: int) -> int:
        length = len(self.plan.order(epoch))
        return length // self.batch_size if self.drop_last else -(-length // self.batch_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, check_start(start, self._batches(epoch))

    def _build(self, epoch: int, start: int) -> None:
        """A pipeline whose first pass reads `epoch` from batch `start` on, and the following epochs whole."""
        from nvidia.dali import fn, pipeline_def, types

        self.length = len(self.plan.order(epoch))  # the same for every epoch of a plan
        self.batches = self._batches(epoch)
        if self.batches == 0:
            raise ValueError(f"{self.length} clips make no full batch of {self.batch_size}")
        self.source = source = (_ClipSource if self.video else _FrameSource)(
            self.plan, epoch, start * self.batch_size, self.batches * self.batch_size, self.on_error)
        decoder = "mixed" if self.gpu else "cpu"
        reap_at_exit()

        @pipeline_def(batch_size=self.batch_size * self.samples_per_clip, num_threads=self.threads,
                      device_id=self.device_id, py_num_workers=max(1, self.workers), py_start_method="spawn",
                      seed=self.plan.seed)
        def pipe():
            augment = self.plan.augment.names  # in the order of plan.py: crop, flip (mirror), erase
            arguments = 1 + ("crop" in augment) + 2 * ("erase" in augment)  # see augment_arguments
            outputs = list(fn.external_source(source=source, num_outputs=(2 if self.video else 1) + arguments + 3,
                                              batch=False, parallel=True))
            if self.video:  # (N, H0, W0, 3) per clip
                images = fn.decoders.video(outputs.pop(0), device=decoder, frames=outputs.pop(0))
                layout = "FCHW"
            else:  # (H0, W0, 3) per frame
                images = fn.decoders.image(outputs.pop(0), device=decoder, output_type=types.RGB)
                layout = "CHW"
            flip = outputs.pop(0)
            images = fn.resize(images, resize_x=self.width, resize_y=self.height, interp_type=types.INTERP_LINEAR,
                               antialias=False, dtype=types.FLOAT)  # no uint8 rounding, as the torch path
            if "crop" in augment:  # outside the frame: black, before normalisation
                images = fn.slice(images, start=outputs.pop(0), shape=[self.height, self.width], axis_names="HW",
                                  out_of_bounds_policy="pad", fill_values=0.0)
            clips = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout=layout, mirror=flip,
                                             mean=[m * 255 for m in MEAN], std=[s * 255 for s in STD])
            if "erase" in augment:  # the mean colour: 0 after normalisation
                clips = fn.erase(clips, anchor=outputs.pop(0), shape=outputs.pop(0), axis_names="HW", fill_value=0.0)
            pid, camid, bad = outputs
            return clips, pid, camid, bad

        self.pipe = pipe()
        self.pipe.build()
        self._pipe_at = (epoch, start)  # where the pipeline's next pass starts

    def __len__(self) -> int:
        return self._batches(self.epoch)

    def _to_torch(self, tensor_list) -> torch.Tensor:
        t = tensor_list.as_tensor()
        if self.gpu:
            from nvidia.dali.plugin.pytorch import feed_ndarray
            out = torch.empty(t.shape(), dtype=torch.float32, device=torch.device("cuda", self.device_id))
            feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(self.device_id))
            return out
        return torch.from_numpy(np.array(t))

    def _explain_at(self, error: Exception, epoch: int, batch: int) -> None:
        """DALI reports a bad image or video without its path (a worker's DatasetError arrives as a
        plain Exception): read the batch as the workers and then the torch path do, which raises the
        DatasetError naming the file, or say what DALI said."""
        self.close()  # the pipeline is unusable after an error: its workers end now
        where = []
        for position in range(batch * self.batch_size, min((batch + 1) * self.batch_size, self.length)):
            t, idx, _ = self.plan.sample(epoch, position)
            idx = idx.ravel()
            for slot in range(self.samples_per_clip):
                self.source._read(t, idx, slot)
            if self.video:  # PyAV decodes the sampled frames, then all between them (DALI's decoder does)
                idx = readable_indices(t, idx, self.on_error)[0]
                decode(t.path, idx)
                decode(t.path, np.arange(idx.min(), idx.max() + 1))
            elif self.on_error == "raise":
                for i in idx:
                    read_image(t.frames[int(i)])
            where.append(t.path if self.video else os.path.dirname(t.frames[0]))
        raise DatasetError(f"DALI failed on batch {batch} of epoch {epoch} ({len(where)} tracklets: {where[0]}, ...), "
                           f"which the torch pipeline reads: {_reason(error)}") from error

    def close(self) -> None:
        """End the pipeline's worker processes now (they end with the pipeline object, or with this
        process, too); the next pass builds a new pipeline."""
        pipe, self.pipe, self._pipe_at = getattr(self, "pipe", None), None, None
        pool = getattr(pipe, "_py_pool", None)  # DALI closes it when the pipeline is collected
        if pool is not None:
            pool.close()

    def __iter__(self):
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0  # the next pass, unless set_epoch says otherwise
        if start >= self.batches:  # resumed at the very end of an epoch: nothing left to read
            return
        if self._pipe_at != (epoch, start):
            self._build(epoch, start)
        self._pipe_at = None  # mid-pass until the epoch is closed below
        n, per_clip = self.plan.n, self.samples_per_clip
        for b in range(start, self.batches):
            try:
                clips, pids, camids, bad = self.pipe.run()
            except StopIteration:
                break
            except Exception as e:  # noqa: BLE001 - DALI re-raises its workers' errors as plain Exception
                self._explain_at(e, epoch, b)
            x = self._to_torch(clips).view(self.batch_size, n, 3, self.height, self.width)
            pid = torch.from_numpy(np.array(pids.as_tensor())).view(self.batch_size, per_clip)[:, 0]
            cam = torch.from_numpy(np.array(camids.as_tensor())).view(self.batch_size, per_clip)[:, 0]
            keep = min(self.batch_size, self.length - b * self.batch_size)
            bad_count = int(np.array(bad.as_tensor()).reshape(self.batch_size, per_clip)[:keep].sum())
            self.bad_frames += bad_count
            yield {"clips": x[:keep], "pids": pid[:keep], "camids": cam[:keep], "bad_frames": bad_count}
        try:  # close DALI's epoch so that the next one starts at epoch + 1
            self.pipe.run()
        except StopIteration:
            pass
        self.pipe.reset()
        self._pipe_at = (epoch + 1, 0)


def _reason(error: Exception) -> str:
    """The line of a DALI error that says what went wrong (DALI wraps it in its pipeline's context)."""
    lines = [line.strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and not line.startswith(("C++ context", "Current pipeline"))]
    return lines[-1] if lines else type(error).__name__
