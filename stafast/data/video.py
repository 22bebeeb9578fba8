"""Video files with PyAV: a container's frame count (`probe`), the frames a clip samples (`decode`).

The torch path decodes clips with `decode`; the DALI path (dali.py) decodes them with DALI's
video decoder.  Both ask `readable_indices` which frames a clip may read, so that a truncated
file stops (or is patched) the same way in both.

Decoding only what a clip needs: an intra-only stream (MJPEG: every packet a keyframe) decodes
exactly the sampled frames; a stream whose decode order is its presentation order (VP8, VP9)
decodes, for each sampled frame, the packets from the keyframe before it up to it (packets of
keyframe groups with no sampled frame, and those after the last sampled frame, are skipped); a
stream with reordered frames (H.264/HEVC with B-frames) decodes from its start up to the last
sampled frame.  Only the sampled frames are converted to RGB.

The YUV -> RGB conversion is the one DALI's CPU decoder makes (FFmpeg's swscale: bilinear,
full-resolution chroma interpolation, accurate rounding, the BT.601 matrix whatever the stream's
colour tags say, full range for yuvj formats and streams flagged full range), so that both CPU
paths return identical uint8 frames; PyAV's default conversion differs (nearest chroma: up to
~100 grey levels at colour edges; and it follows a BT.709 tag).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np

from ..extras import require
from .datasets import DatasetError, VideoTracklet

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
# Encoders for writing tracklets (synth --layout videos): FFmpeg encoder, container, pixel format, options.
ENCODERS = {
    "vp9": ("libvpx-vp9", ".webm", "yuv420p", {"crf": "24", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
    "mjpeg": ("mjpeg", ".avi", "yuvj420p", {}),
    "h264": ("libx264", ".mp4", "yuv420p", {"crf": "20", "preset": "veryfast"}),
}
# What DALI's video decoder takes (nvidia-dali 2.x): on the CPU (its bundled libavcodec) VP8,
# VP9 and MJPEG; with NVDEC ("mixed") also H.264, HEVC, AV1 and MPEG-4.
CPU_CODECS = ("vp8", "vp9", "mjpeg")
GPU_CODECS = CPU_CODECS + ("h264", "hevc", "av1", "mpeg4")


AV_MIN = (17, 0)  # VideoFrame.reformat(threads=...)
_AV_REQUIREMENT = "av>=" + ".".join(map(str, AV_MIN))


def _av(path: str):
    av = require("av", "video", f"reading the video {path}")
    if tuple(int(p) for p in av.__version__.split(".")[:2]) < AV_MIN:
        raise DatasetError(f"cannot read video {path}: PyAV {av.__version__} is installed, stafast needs "
                           f"{_AV_REQUIREMENT} (pip install -U av)")
    return av


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int   # declared by the container
    readable: int     # leading frames whose packets the file holds
    codec: str
    height: int
    width: int


def probe(path: str) -> VideoInfo:
    """The frame count of `path`'s first video stream, read from the container without decoding.

    The count is the container's own (AVI, MP4 and MOV headers store it; Matroska/WebM store a
    duration, from which it follows at the stream's frame rate) and at least the packets present;
    `readable` is the number of packets present up to the first damaged one, so a truncated file
    shows as readable < num_frames.  Raises DatasetError naming the file when it is missing, not
    a container FFmpeg reads, or holds no video frame."""
    if not os.path.isfile(path):
        raise DatasetError(f"video {path} does not exist")
    av = _av(path)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DatasetError(f"video {path} has no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            readable, first, end, step = 0, None, None, 0
            for packet in container.demux(stream):
                if not packet.size:  # the demuxer's end-of-stream marker
                    continue
                if packet.is_corrupt:  # a packet cut short: the file was truncated here
                    break
                readable += 1
                if packet.pts is not None:
                    first = packet.pts if first is None else min(first, packet.pts)
                    end = max(end or packet.pts, packet.pts + (packet.duration or 0))
                    step = max(step, packet.duration or 0)
            declared = stream.frames
            if not declared and end is not None and container.duration and len(container.streams) == 1:
                # Matroska/WebM: the header's duration against the span of the packets present (the
                # last one's duration included; a frame at the stream's rate where packets carry none)
                rate = stream.average_rate or stream.guessed_rate
                frame_s = float(step * stream.time_base) or (1 / float(rate) if rate else 0)
                span = float((end - first) * stream.time_base) + (0 if step else frame_s)
                if frame_s:
                    declared = readable + max(0, round((container.duration / 1e6 - span) / frame_s))
            info = VideoInfo(max(declared, readable), readable, ctx.name, ctx.height, ctx.width)
    except av.FFmpegError as e:
        raise DatasetError(f"cannot read video {path}: {type(e).__name__}: {e}") from None
    if readable == 0:
        raise DatasetError(f"video {path} holds no readable frame (declared {info.num_frames})")
    return info


def readable_indices(t: VideoTracklet, idx: np.ndarray, on_error: str) -> tuple[np.ndarray, int]:
    """The frames a clip of `t` reads for the sampled `idx`, and how many of them were replaced.

    Frames past the end of a truncated file stop with its path (on_error="raise"), or are replaced
    by the nearest readable frame, its last one, and counted (on_error="skip"), as the image path
    does for unreadable frames."""
    idx = np.asarray(idx)
    missing = idx >= t.readable
    if not missing.any():
        return idx, 0
    if on_error == "raise":
        raise DatasetError(f"cannot decode frame {int(idx[missing][0])} of video {t.path}: the file holds "
                           f"{t.readable} of the {t.num_frames} frames its container declares (truncated?)")
    return np.minimum(idx, t.readable - 1), int(missing.sum())


def to_rgb(frame) -> np.ndarray:
    """A decoded PyAV frame as (H, W, 3) uint8 RGB, converted as DALI's CPU decoder does."""
    from av.video.reformatter import Interpolation
    flags = Interpolation.BILINEAR | Interpolation.FULL_CHR_H_INT | Interpolation.ACCURATE_RND | Interpolation.BITEXACT
    full_range = frame.format.name.startswith("yuvj") or frame.color_range == 2  # AVCOL_RANGE_JPEG
    # threads=1: one thread per worker, as for decoding (PyAV >= 17 picks a thread count per CPU otherwise)
    return frame.reformat(format="rgb24", src_colorspace="ITU601", src_color_range="JPEG" if full_range else "MPEG",
                          interpolation=flags, threads=1).to_ndarray()


def _packets_to_decode(packets, wanted: list[int], rank: list[int]) -> list[bool]:
    """Which packets (decode order) the frames `wanted` (presentation order) need; rank[j] is the
    presentation index of packet j."""
    if all(p.is_keyframe for p in packets):
        want = set(wanted)
        return [rank[j] in want for j in range(len(packets))]
    if rank != sorted(rank):  # reordered frames: everything up to the last wanted frame's packet
        want = set(wanted)
        last = max(j for j in range(len(packets)) if rank[j] in want)
        return [j <= last for j in range(len(packets))]
    need = [False] * len(packets)
    for i in wanted:  # decode order is presentation order here
        k = i
        while k > 0 and not packets[k].is_keyframe:
            k -= 1
        need[k:i + 1] = [True] * (i + 1 - k)
    return need


def decode(path: str, indices) -> np.ndarray:
    """Frames `indices` (presentation order, repeats allowed, each < the readable count) of the
    video `path` as (len(indices), H, W, 3) uint8 RGB."""
    av = _av(path)
    indices = [int(i) for i in np.asarray(indices).ravel()]
    wanted = sorted(set(indices))
    frames: dict[int, np.ndarray] = {}
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            ctx = stream.codec_context
            ctx.thread_count = 1  # one decoding thread per worker, as DALI's per-sample decoding
            packets = []
            for p in container.demux(stream):
                if p.size and p.is_corrupt:
                    break
                if p.size:
                    packets.append(p)
            if any(p.pts is None for p in packets):
                raise DatasetError(f"video {path} has packets without timestamps: cannot order its frames")
            by_pts = {pts: i for i, pts in enumerate(sorted(p.pts for p in packets))}
            if wanted and wanted[-1] >= len(packets):
                raise DatasetError(f"cannot decode frame {wanted[-1]} of video {path}: it holds {len(packets)} frames")
            need = _packets_to_decode(packets, wanted, [by_pts[p.pts] for p in packets])
            want = set(wanted)

            def take(decoded):
                for f in decoded:
                    i = by_pts.get(f.pts)
                    if i in want and i not in frames:
                        frames[i] = to_rgb(f)
            for p, needed in zip(packets, need):
                if len(frames) == len(want):
                    break
                if needed:
                    take(ctx.decode(p))
            if len(frames) < len(want):
                take(ctx.decode(None))  # frames the decoder still holds (threads, reordering)
    except av.FFmpegError as e:
        raise DatasetError(f"cannot decode video {path}: {type(e).__name__}: {e}") from None
    lost = [i for i in wanted if i not in frames]
    if lost:
        raise DatasetError(f"cannot decode frame {lost[0]} of video {path}: the decoder returned no frame for it")
    return np.stack([frames[i] for i in indices])


def remux(path: str) -> bytes:
    """The packets of the first video stream of `path`, up to the first damaged one, in a new
    container of the same format (stream copy: no decoding)."""
    av = _av(path)
    out = io.BytesIO()
    try:
        with av.open(path) as src:
            stream = src.streams.video[0]
            with av.open(out, "w", format=src.format.name.split(",")[0]) as dst:
                copy = dst.add_stream_from_template(stream)
                for packet in src.demux(stream):
                    if packet.size and packet.is_corrupt:
                        break
                    if packet.size:
                        packet.stream = copy
                        dst.mux(packet)
    except av.FFmpegError as e:
        raise DatasetError(f"cannot remux video {path}: {type(e).__name__}: {e}") from None
    return out.getvalue()


def read_clip(t: VideoTracklet, idx: np.ndarray, on_error: str = "raise") -> tuple[np.ndarray, int]:
    """(frames (M, H, W, 3) uint8 for the M sampled indices, replaced frames), with PyAV."""
    idx, bad = readable_indices(t, np.asarray(idx).ravel(), on_error)
    return decode(t.path, idx), bad


def video_tracklet(path: str, pid: int = -1, camid: int = 0) -> VideoTracklet:
    """A VideoTracklet of `path` with the frame count its container declares."""
    info = probe(path)
    return VideoTracklet(path, info.num_frames, pid, camid, info.codec, info.readable)


def write_video(path: str, frames, codec: str = "vp9", fps: int = 25, gop: int = 25) -> str:
    """Encode `frames` ((H, W, 3) uint8 RGB, H and W even) into `path` with a codec of ENCODERS,
    a keyframe at least every `gop` frames (MJPEG: every frame)."""
    av = _av(path)
    if codec not in ENCODERS:
        raise ValueError(f"codec must be one of {tuple(ENCODERS)}, got {codec!r}")
    encoder, _, pix_fmt, options = ENCODERS[codec]
    frames = list(frames)
    h, w = frames[0].shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"4:2:0 video needs an even frame size, got {h}x{w}")
    with av.open(path, "w") as container:
        stream = container.add_stream(encoder, rate=fps, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.codec_context.gop_size = gop
        if codec == "mjpeg":  # quality close to the JPEG frames of the image layouts
            stream.codec_context.qmin, stream.codec_context.qmax = 2, 4
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(stream.encode())
    return path
