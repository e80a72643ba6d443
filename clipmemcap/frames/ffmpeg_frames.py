"""Decode video frames and images into CLIP-sized uint8 RGB arrays, with ffmpeg.

Both paths end in the same filter chain, :func:`_clip_resize` (``scale`` the shortest side to
``size``, bicubic, then centre ``crop``), so a picture gets the same pixels whether it arrives as
a video frame or as an image.

Videos: one ffmpeg process per merged grid range: fast seek (``-ss`` before ``-i``), then
``fps`` and the resize in one filter graph, raw RGB on a pipe. ffmpeg resets timestamps to 0 at
the seek point, so output frame i is grid frame ``seek + i``. The seek lands one grid step before
the range: an exact seek drops every source frame before the seek time, including the one still
on screen at it when source and grid frames do not line up (29.97 or 24 fps sources), so that
lead frame is decoded and thrown away. ``round=up`` makes each output tick take the last source
frame at or before the tick, i.e. the frame on screen at that time (``round=down`` would take
the last frame before the *next* tick, up to 1/fps late).

Images: Pillow decodes each file (and converts grayscale, CMYK, palette and alpha images to RGB,
as open_clip's own preprocessing does); a batch then goes through one ffmpeg as a stream of PPM
frames, since starting ffmpeg per image costs more than CLIP itself.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import ffmpeg
import numpy as np
from PIL import Image

from clipmemcap.core.errors import InputError
from clipmemcap.core.failures import Failure


class DecodeError(InputError, RuntimeError):
    """A video or image that ffmpeg (or Pillow) cannot decode; the message names it."""


def _clip_resize(stream, size: int):
    stream = stream.filter("scale", size, size, force_original_aspect_ratio="increase", flags="bicubic")
    return stream.filter("crop", size, size)


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


def _last_error(errors: list[bytes]) -> str:
    # ffmpeg names its contexts by memory address ("[mov,mp4 @ 0x55...]"): drop it, so the same
    # fault gives the same reason in every run.
    message = re.sub(r" @ 0x[0-9a-f]+", "", (errors[0] if errors else b"").decode(errors="replace")).strip()
    return message.splitlines()[-1] if message else ""


def decode_range(
    path: Path, frames: range, fps: float, size: int, block: int = 64, threads: int = 1
) -> Iterator[np.ndarray]:
    """Yield uint8 arrays [n <= block, size, size, 3] covering grid frames ``frames`` in order.
    Raises DecodeError if ffmpeg fails or the video ends before the last requested frame."""
    start = frames.start / fps
    lead = 1 if frames.start > 0 else 0
    source = ffmpeg.input(f"file:{path}", ss=f"{(frames.start - lead) / fps:.6f}", threads=threads)
    process = (
        _clip_resize(source.filter("fps", fps=fps, round="up"), size)
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
    if produced < len(frames):
        last = (frames.start + produced) / fps
        detail = f": {error}" if (error := _last_error(errors)) else ""
        raise DecodeError(
            f"{path.name}: decoded {produced} of {len(frames)} frames from {start:.2f}s; the video "
            f"ends near {last:.2f}s, before {(frames.stop - 1) / fps:.2f}s that the annotation "
            f"needs{detail}"
        )


def load_rgb(path: Path, max_pixels: int) -> Image.Image:
    """Decode an image file fully and convert it to RGB. Raises DecodeError naming the file when
    it is missing, unreadable, truncated, or larger than ``max_pixels``."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise DecodeError(f"{path.name}: {width}x{height} image exceeds the {max_pixels:,}-pixel limit")
            image.load()  # lazy until here: truncation and corrupt data surface now
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DecodeError(f"{path.name}: not a readable image ({type(err).__name__}: {err})") from None


def resize_images(images: list[Image.Image], size: int, threads: int = 1) -> np.ndarray:
    """[n, size, size, 3] uint8: the images, of any sizes, through one ffmpeg as PPM frames."""
    process = (
        _clip_resize(ffmpeg.input("pipe:", format="image2pipe", vcodec="ppm", threads=threads), size)
        .output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough")
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error")
        .run_async(pipe_stdin=True, pipe_stdout=True, pipe_stderr=True)
    )

    def write() -> None:
        try:
            for image in images:
                process.stdin.write(b"P6\n%d %d\n255\n" % image.size + image.tobytes())
        except BrokenPipeError:  # ffmpeg died; the short read below reports it
            pass
        finally:
            process.stdin.close()

    errors: list[bytes] = []
    helpers = [threading.Thread(target=write, daemon=True),
                threading.Thread(target=_drain, args=(process.stderr, errors), daemon=True)]
    for thread in helpers:
        thread.start()
    out = np.empty((len(images), size, size, 3), np.uint8)
    got = _read_frames(process.stdout, out) if images else 0
    process.stdout.close()
    process.wait()
    for thread in helpers:
        thread.join()
    if got != len(images):  # the PPM frames are ours, so this is no bad input but a broken ffmpeg
        raise RuntimeError(f"ffmpeg resized {got} of {len(images)} images: {_last_error(errors)}")
    return out


def decode_images(items: list[tuple[str, Path]], size: int, max_pixels: int,
                  threads: int = 1) -> Iterator[np.ndarray | Failure]:
    """For ``(key, path)`` pairs: a Failure for each unreadable image, then one block with the
    readable ones, in order."""
    readable = []
    for key, path in items:
        try:
            readable.append(load_rgb(path, max_pixels))
        except DecodeError as err:
            yield Failure(key, "decode", str(err))
    if readable:
        yield resize_images(readable, size, threads)
