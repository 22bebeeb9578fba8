"""What DALI's decoders may be given: structural checks that keep damaged files away from them.

DALI 2.4 crashes the process (SIGSEGV) on two kinds of damaged input instead of raising:

- `fn.decoders.image` (CPU and "mixed": one ImageDecoder) reads every sample's header (nvImageCodec's
  parsers) in blocks of 16 samples spread over its thread pool once a batch holds 32 samples or more
  (6 clips of 6 frames).  When the calling thread's own block meets a header its parser rejects
  (not JPEG/PNG/..., a JPEG whose markers run into garbage or end before the scan, a PNG cut before
  IEND), the error leaves the operator without waiting for the pool, whose threads go on using the
  operator's unwound stack: a crash in 4 runs of 5.  Errors found later (in the entropy data) are
  raised cleanly.
- `fn.decoders.video` reads the file from memory with a reader whose bytes-left count is a 32-bit
  int: a container offset more than 2 GiB past the end (an AVI whose index was overwritten) or
  before the start makes that count positive and the reader copies from outside the buffer.

So the DALI path hands a frame's bytes to its decoder only when `image_problem` finds none of what
the parser rejects (else Pillow decodes the file: it raises DatasetError naming it, as in the torch
pipeline, or its pixels go to DALI as a lossless PPM copy), and a video file's bytes only when
`container_problem` finds no such offset (PyAV demuxes the bytes through a reader that records
every seek); else DALI gets the same packets remuxed by PyAV into a new container.  Both
pipelines then decode the same frames.
"""
from __future__ import annotations

import functools
import io
import os
import warnings
import zlib

import numpy as np

from .datasets import DatasetError
from .frames import read_image
from .video import _av, remux

JPEG_SOI, JPEG_EOI, JPEG_SOS = b"\xff\xd8", b"\xff\xd9", 0xDA
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> the bit depths nvImageCodec's parser takes for it
PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
READER_LIMIT = 2 ** 31  # DALI's in-memory video reader counts the bytes left in an int


def image_problem(data) -> str | None:
    """Why DALI's image parser could reject the encoded image `data` (bytes or a uint8 array), or
    None.  JPEG and PNG are walked as nvImageCodec's parsers walk them (stricter where cheap: a
    JPEG must end with its end-of-image marker, PNG chunks must match their CRC); any other format
    is reported, so that Pillow decodes it."""
    b = memoryview(data).cast("B")
    if bytes(b[:2]) == JPEG_SOI:
        return _jpeg_problem(b)
    if bytes(b[:8]) == PNG_SIGNATURE:
        return _png_problem(b)
    return f"not a JPEG or PNG file (starts with {bytes(b[:8])!r})"


def _jpeg_problem(b: memoryview) -> str | None:
    n, pos, frame_header = len(b), 2, False
    while True:  # markers (B.1.1.2 of ITU-T T.81: 0xFF, optional 0xFF fill bytes, a code) up to the scan
        if pos >= n or b[pos] != 0xFF:
            return f"JPEG: no marker at byte {pos}" + (" (the file ends there)" if pos >= n else "")
        while pos < n and b[pos] == 0xFF:
            pos += 1
        if pos >= n or b[pos] == 0x00:
            return f"JPEG: invalid marker at byte {pos - 1}"
        code, pos = b[pos], pos + 1
        if code == JPEG_SOS:
            break
        size = int.from_bytes(b[pos:pos + 2], "big") if pos + 2 <= n else 0
        if size < 2 or pos + size > n:
            return f"JPEG: segment 0xFF{code:02X} at byte {pos - 2} declares {size} bytes, {n - pos} are left"
        if 0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC):  # a frame header (SOFn)
            head = bytes(b[pos + 2:pos + 8]) if size >= 8 else b"\0" * 6
            precision, height, width, components = head[0], int.from_bytes(head[1:3], "big"), \
                int.from_bytes(head[3:5], "big"), head[5]
            if components not in (1, 3, 4) or size < 8 + 3 * components or precision > 16:
                return f"JPEG: malformed frame header at byte {pos - 2}"
            if not (height and width):
                return f"JPEG: frame header at byte {pos - 2} declares {height}x{width} pixels"
            frame_header = True
        pos += size
    if not frame_header:
        return "JPEG: no frame header (SOF) before the scan"
    if bytes(b[-2:]) != JPEG_EOI:
        return "JPEG: does not end with the end-of-image marker (truncated?)"
    return None


def _png_problem(b: memoryview) -> str | None:
    n, pos = len(b), 8
    if bytes(b[12:16]) != b"IHDR" or int.from_bytes(b[8:12], "big") != 13 or n < 33:
        return "PNG: no IHDR chunk after the signature"
    width, height = (int.from_bytes(b[i:i + 4], "big") for i in (16, 20))
    depth, colour = b[24], b[25]
    if not (width and height) or depth not in PNG_DEPTHS.get(colour, ()):
        return f"PNG: IHDR declares {width}x{height} pixels, bit depth {depth}, colour type {colour}"
    while pos + 12 <= n:  # length, type, data, CRC
        length, kind = int.from_bytes(b[pos:pos + 4], "big"), bytes(b[pos + 4:pos + 8])
        end = pos + 8 + length
        if end + 4 > n:
            break
        if zlib.crc32(b[pos + 4:end]) != int.from_bytes(b[end:end + 4], "big"):
            return f"PNG: chunk {kind!r} at byte {pos} fails its CRC"
        if kind == b"IEND":
            return None
        pos = end + 4
    return f"PNG: chunk at byte {pos} runs past the end of the file, before IEND (truncated?)"


def image_bytes(path: str, image: np.ndarray | None = None) -> np.ndarray:
    """The encoded frame `path` for DALI's image decoder: the file's bytes when `image_problem`
    finds nothing, else a PPM of its pixels (`image`, or decoded by Pillow, whose DatasetError
    names an unreadable file as the torch pipeline's does)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DatasetError(f"cannot read frame {path}: {e}") from None
    if image_problem(data) is None:
        return data
    return ppm(read_image(path) if image is None else image)


def ppm(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB as the bytes of a binary PPM: a lossless copy any DALI image decoder parses."""
    header = f"P6\n{image.shape[1]} {image.shape[0]}\n255\n".encode()
    return np.concatenate([np.frombuffer(header, np.uint8), np.ascontiguousarray(image, np.uint8).ravel()])


class _SeekRecorder(io.RawIOBase):
    """The bytes of a file, read by PyAV, remembering the first seek outside what DALI's reader takes."""

    def __init__(self, data):
        self.buffer, self.size, self.outside = io.BytesIO(memoryview(data).cast("B")), len(data), None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        return self.buffer.readinto(target)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset + {io.SEEK_SET: 0, io.SEEK_CUR: self.buffer.tell(), io.SEEK_END: self.size}[whence]
        if self.outside is None and not 0 <= target < self.size + READER_LIMIT:
            self.outside = target
        return self.buffer.seek(max(target, 0))

    def tell(self) -> int:
        return self.buffer.tell()


def video_bytes(path: str) -> np.ndarray:
    """The video file `path` for DALI's video decoder: its bytes, or, when `container_problem`
    finds an offset DALI's reader cannot take, the same packets remuxed by PyAV into a new
    container (so that DALI decodes what PyAV does), with a warning naming the file."""
    try:
        problem = container_problem(path)
        if problem is None:
            return np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DatasetError(f"cannot read video {path}: {e}") from None
    warnings.warn(f"video {path}: {problem}; DALI decodes a copy of its packets remuxed by PyAV", stacklevel=2)
    return np.frombuffer(remux(path), dtype=np.uint8)


def container_problem(path: str) -> str | None:
    """Why DALI's video reader cannot take the file `path`, or None: its container points to a byte
    before the start or more than 2 GiB past the end (see the module doc).  Once per file and
    version (size, modification time) in a process."""
    st = os.stat(path)
    return _container_problem(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1 << 16)
def _container_problem(path: str, size: int, mtime_ns: int) -> str | None:
    av = _av(path)
    reader = _SeekRecorder(np.fromfile(path, dtype=np.uint8))
    try:
        with av.open(reader, "r", buffer_size=1 << 16) as container:
            for _ in container.demux(container.streams.video[0]):  # DALI indexes every packet too
                pass
    except (av.FFmpegError, IndexError) as e:
        raise DatasetError(f"cannot read video {path}: {type(e).__name__}: {e}") from None
    if reader.outside is None:
        return None
    return f"its container points to byte {reader.outside}, outside the file's {size} bytes (damaged)"
