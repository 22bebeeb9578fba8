"""The NVIDIA DALI frame pipeline: the same clips as the torch path (loader.py), decoded by DALI.

A parallel external source (Python worker processes, spawned: forking a process that already
runs threads, as torch's, can deadlock the children) reads the encoded bytes of one frame per
DALI sample from the ClipPlan; DALI decodes them ("mixed" = nvJPEG on the GPU when a GPU is
used, "cpu" otherwise), resizes linearly (no antialias, half-pixel centres, as the torch path),
flips whole clips (the flag is the same for the N frames of a clip) and normalises.  A DALI
batch holds B clips x N frames; the loader reshapes it to (B, N, 3, H, W).

An unreadable frame stops with a DatasetError naming its path (on_error="raise"), or is replaced
by the nearest readable frame of its tracklet and counted in `bad_frames` (on_error="skip").
"""
from __future__ import annotations

import numpy as np
import torch

from .datasets import DatasetError
from .loader import MEAN, STD, read_image, read_nearest
from .plan import ClipPlan


class _FrameSource:
    """Per-sample callback of the parallel external source: must be picklable, stateless per call."""

    def __init__(self, plan: ClipPlan, start_epoch: int, padded: int, on_error: str):
        self.plan, self.start_epoch, self.padded, self.on_error = plan, start_epoch, padded, on_error

    def __call__(self, info):
        epoch = self.start_epoch + info.epoch_idx
        position, slot = divmod(info.idx_in_epoch, self.plan.n)
        if position >= self.padded:
            raise StopIteration
        length = len(self.plan.order(epoch))
        t, idx, flip = self.plan.sample(epoch, min(position, length - 1))  # the last test batch is padded
        frame = int(idx.ravel()[slot])
        data, bad = self._bytes(t.frames, frame)
        return data, np.array(int(flip), dtype=np.int32), np.array(t.pid, dtype=np.int64), \
            np.array(t.camid, dtype=np.int64), np.array(bad, dtype=np.int32)

    def _bytes(self, frames, i):
        if self.on_error == "raise":
            try:
                return np.fromfile(frames[i], dtype=np.uint8), 0
            except OSError as e:
                raise DatasetError(f"cannot read frame {frames[i]}: {e}") from None
        _, j = read_nearest(frames, i)  # full decode: only readable frames reach DALI in skip mode
        return np.fromfile(frames[j], dtype=np.uint8), int(j != i)


class DALIClipLoader:
    def __init__(self, plan: ClipPlan, batch_size: int, height: int = 256, width: int = 128, workers: int = 2,
                 threads: int = 2, on_error: str = "raise", device: str = "cpu", start_epoch: int = 0):
        if plan.mode == "all":
            raise ValueError("the DALI pipeline takes train/test clips; use the torch path for all-frames mode")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.plan, self.batch_size, self.height, self.width = plan, batch_size, height, width
        self.workers, self.threads, self.on_error = workers, threads, on_error
        self.gpu = torch.device(device).type == "cuda"
        self.drop_last = plan.mode == "train"
        self.bad_frames = 0
        self._build(start_epoch)

    def _build(self, epoch: int) -> None:
        from nvidia.dali import fn, pipeline_def, types

        self.epoch = epoch
        length = len(self.plan.order(epoch))
        self.batches = length // self.batch_size if self.drop_last else -(-length // self.batch_size)
        if self.batches == 0:
            raise ValueError(f"{length} clips make no full batch of {self.batch_size}")
        self.length = length
        source = _FrameSource(self.plan, epoch, self.batches * self.batch_size, self.on_error)
        device_id = torch.cuda.current_device() if self.gpu else None

        @pipeline_def(batch_size=self.batch_size * self.plan.n, num_threads=self.threads, device_id=device_id,
                      py_num_workers=max(1, self.workers), py_start_method="spawn", seed=self.plan.seed)
        def pipe():
            data, flip, pid, camid, bad = fn.external_source(source=source, num_outputs=5, batch=False, parallel=True)
            images = fn.decoders.image(data, device="mixed" if self.gpu else "cpu", output_type=types.RGB)
            images = fn.resize(images, resize_x=self.width, resize_y=self.height, interp_type=types.INTERP_LINEAR,
                               antialias=False, dtype=types.FLOAT)  # no uint8 rounding, as the torch path
            clips = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mirror=flip,
                                             mean=[m * 255 for m in MEAN], std=[s * 255 for s in STD])
            return clips, pid, camid, bad

        self.pipe = pipe()
        self.pipe.build()

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # the workers follow DALI's own epoch count: rebuild to jump
            self._build(epoch)

    def __len__(self) -> int:
        return self.batches

    def _to_torch(self, tensor_list) -> torch.Tensor:
        t = tensor_list.as_tensor()
        if self.gpu:
            from nvidia.dali.plugin.pytorch import feed_ndarray
            out = torch.empty(t.shape(), dtype=torch.float32, device="cuda")
            feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream())
            return out
        return torch.from_numpy(np.array(t))

    def _explain(self, error: Exception, batch: int) -> None:
        """DALI reports a bad image without its path: find it by reading the batch's frames."""
        for position in range(batch * self.batch_size, min((batch + 1) * self.batch_size, self.length)):
            t, idx, _ = self.plan.sample(self.epoch, position)
            for i in idx.ravel():
                read_image(t.frames[int(i)])  # raises DatasetError with the path
        raise error

    def __iter__(self):
        n = self.plan.n
        for b in range(self.batches):
            try:
                clips, pids, camids, bad = self.pipe.run()
            except StopIteration:
                break
            except RuntimeError as e:
                self._explain(e, b)
            x = self._to_torch(clips).view(self.batch_size, n, 3, self.height, self.width)
            pid = torch.from_numpy(np.array(pids.as_tensor())).view(self.batch_size, n)[:, 0]
            cam = torch.from_numpy(np.array(camids.as_tensor())).view(self.batch_size, n)[:, 0]
            keep = min(self.batch_size, self.length - b * self.batch_size)
            bad_count = int(np.array(bad.as_tensor()).reshape(self.batch_size, n)[:keep].sum())
            self.bad_frames += bad_count
            yield {"clips": x[:keep], "pids": pid[:keep], "camids": cam[:keep], "bad_frames": bad_count}
        try:  # close DALI's epoch so that the next one starts at epoch + 1
            self.pipe.run()
        except StopIteration:
            pass
        self.pipe.reset()
        self.epoch += 1
