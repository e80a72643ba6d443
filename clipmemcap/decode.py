"""Decode grid frames of a video with ffmpeg straight into numpy.

One ffmpeg process per merged grid range: fast seek (``-ss`` before ``-i``), then ``fps`` +
``scale`` (shortest side to ``size``) + centre ``crop`` in one filter graph, raw RGB on a pipe.
ffmpeg resets timestamps to 0 at the seek point, so output frame i is grid frame ``seek + i``.
The seek lands one grid step before the range: an exact seek drops every source frame before the
seek time, including the one still on screen at it when source and grid frames do not line up
(29.97 or 24 fps sources), so that lead frame is decoded and thrown away. ``round=up`` makes each output tick take the last source frame
at or before the tick, i.e. the frame on screen at that time (``round=down`` would take the last
frame before the *next* tick, up to 1/fps late).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import ffmpeg
import numpy as np


class DecodeError(RuntimeError):
    pass


def _drain(stream, sink: list) -> None:
    sink.append(stream.read())


def _read_frames(stream, out: np.ndarray) -> int:
    """Fill ``out`` from the pipe; returns whole frames read (fewer only at end of stream)."""
    view, filled = memoryview(out).cast("B"), 0
    while filled < len(view):
        n = stream.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled // out[0].nbytes


def decode_range(
    path: Path, frames: range, fps: float, size: int, block: int = 64, threads: int = 1
) -> Iterator[np.ndarray]:
    """Yield uint8 arrays [n <= block, size, size, 3] covering grid frames ``frames`` in order.
    Raises DecodeError if ffmpeg fails or the video ends before the last requested frame."""
    start = frames.start / fps
    lead = 1 if frames.start > 0 else 0
    process = (
        ffmpeg.input(str(path), ss=f"{(frames.start - lead) / fps:.6f}", threads=threads)
        .filter("fps", fps=fps, round="up")
        .filter("scale", size, size, force_original_aspect_ratio="increase", flags="bicubic")
        .filter("crop", size, size)
        .output("pipe:", format="rawvideo", pix_fmt="rgb24", frames=len(frames) + lead)
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-an", "-sn")
        .run_async(pipe_stdout=True, pipe_stderr=True)
    )
    # ffmpeg can write a lot to stderr on a corrupt file; drain it so the pipe never fills.
    errors: list[bytes] = []
    drainer = threading.Thread(target=_drain, args=(process.stderr, errors), daemon=True)
    drainer.start()
    produced = 0
    try:
        if lead:  # a short read here leaves the loop below with nothing, and so an error
            _read_frames(process.stdout, np.empty((lead, size, size, 3), np.uint8))
        while produced < len(frames):
            block_frames = np.empty((min(block, len(frames) - produced), size, size, 3), np.uint8)
            got = _read_frames(process.stdout, block_frames)
            if got:
                produced += got
                yield block_frames[:got]
            if got < len(block_frames):
                break
    finally:
        process.stdout.close()
        if produced < len(frames):
            process.kill()
        process.wait()
        drainer.join()
    # ffmpeg names its contexts by memory address ("[mov,mp4 @ 0x55...]"): drop it, so the same
    # fault gives the same reason in every run.
    message = re.sub(r" @ 0x[0-9a-f]+", "", (errors[0] if errors else b"").decode(errors="replace")).strip()
    if produced < len(frames):
        last = (frames.start + produced) / fps
        detail = f": {message.splitlines()[-1]}" if message else ""
        raise DecodeError(
            f"{path.name}: decoded {produced} of {len(frames)} frames from {start:.2f}s; the video "
            f"ends near {last:.2f}s, before {(frames.stop - 1) / fps:.2f}s that the annotation "
            f"needs{detail}"
        )
