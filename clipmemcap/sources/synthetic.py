"""A synthetic ActivityNet Captions source: real h264 mp4 videos and a ``captions.zip`` in the
official format, so the whole pipeline runs offline.

Every frame carries its own source-frame index as a bar code in the middle of the picture, inside
the centre square that CLIP's resize-and-crop keeps; :func:`read_frame_index` reads it back from a
decoded ``size x size`` frame. That makes frame timing testable end to end.
"""

from __future__ import annotations

import io
import json
import random
import string
import subprocess
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipmemcap.core.atomic import atomic_path
from clipmemcap.core.numerics import x264_options

CODE_BITS = 14  # up to 16,383 frames: nine minutes at 30 fps
ID_ALPHABET = string.ascii_letters + string.digits + "_-"
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
ACTIONS = ("a counter ticks", "a square slides", "the picture flickers", "stripes drift by")


def _code_cells(side: int) -> list[tuple[slice, slice]]:
    """Bar cells of the code inside a square of ``side`` pixels: a band across the middle."""
    rows = slice(int(side * 0.40), int(side * 0.60))
    left, width = side * 0.08, side * 0.84 / CODE_BITS
    return [(rows, slice(int(left + b * width), int(left + (b + 1) * width))) for b in range(CODE_BITS)]


def draw_frame(index: int, width: int, height: int, colour: tuple[int, int, int]) -> np.ndarray:
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = colour
    # A moving block outside the code band keeps the encoder honest (real motion between frames).
    x = (index * 7) % max(1, width - 40)
    frame[: height // 5, x : x + 40] = 255 - np.array(colour, np.uint8)
    side = min(width, height)
    top, left = (height - side) // 2, (width - side) // 2
    square = frame[top : top + side, left : left + side]
    for bit, (rows, cols) in enumerate(_code_cells(side)):
        square[rows, cols] = 255 if (index >> bit) & 1 else 0
    return frame


def read_frame_index(frame: np.ndarray) -> int:
    """Inverse of the bar code in :func:`draw_frame`, for a centre-cropped square frame."""
    value = 0
    for bit, (rows, cols) in enumerate(_code_cells(frame.shape[0])):
        cell = frame[rows, cols]
        h, w = cell.shape[:2]
        if cell[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].mean() > 127:
            value |= 1 << bit
    return value


def encode_mp4(path: Path, frames: Iterable[np.ndarray], width: int, height: int, fps: int, crf: int = 18,
               options: tuple[str, ...] = ()) -> None:
    """Encode RGB ``frames`` [height, width, 3] as h264 mp4 (yuv420p, so any player reads it);
    ``options``: further ffmpeg output options. The file appears only when complete."""
    with atomic_path(path) as tmp:
        command = [
            "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:",
            "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), *x264_options(), *options,
            "-pix_fmt", "yuv420p", "-f", "mp4", str(tmp),
        ]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        for frame in frames:
            process.stdin.write(frame.tobytes())
        process.stdin.close()
        if process.wait() != 0:
            raise RuntimeError(f"ffmpeg failed writing {path}: {process.stderr.read().decode()}")


def write_video(path: Path, duration: float, width: int, height: int, fps: int = 30,
                colour: tuple[int, int, int] = COLOURS["blue"]) -> None:
    """``duration`` seconds of coded frames (see :func:`draw_frame`)."""
    frames = (draw_frame(index, width, height, colour) for index in range(round(duration * fps)))
    encode_mp4(path, frames, width, height, fps, options=("-g", str(2 * fps), "-movflags", "+faststart"))


@dataclass(frozen=True)
class SyntheticSource:
    zip_path: Path
    videos_dir: Path
    annotations: dict[str, dict]  # file name -> the JSON written into the zip


def _random_segments(rng: random.Random, duration: float, colour: str) -> dict:
    count = rng.randint(2, 4)
    spans = []
    for _ in range(count):
        length = rng.uniform(1.0, max(1.5, duration * 0.6))
        start = rng.uniform(0, max(0.0, duration - length))
        spans.append([round(start, 2), round(min(duration, start + length), 2)])
    # Guarantee an overlap, as most real videos have one.
    spans[1] = [round(spans[0][0] + 0.3 * (spans[0][1] - spans[0][0]), 2), spans[0][1]]
    sentences = [f" {rng.choice(ACTIONS)} on a {colour} background." for _ in spans]
    return {"duration": duration, "timestamps": spans, "sentences": sentences}


def make_activitynet_source(out_dir: Path, n_train: int = 8, n_test: int = 4, min_duration: float = 4.0,
                max_duration: float = 12.0, sizes: tuple[tuple[int, int], ...] = ((640, 360), (480, 270), (320, 240)),
                fps: int = 30, seed: int = 0) -> SyntheticSource:
    """Write ``videos/<id>.mp4`` and ``captions.zip`` (train.json, val_1.json, val_2.json; val_2
    covers the same videos as val_1 with other segments, as in the real dataset)."""
    rng = random.Random(seed)
    videos_dir = Path(out_dir) / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    annotations: dict[str, dict] = {"train.json": {}, "val_1.json": {}, "val_2.json": {}}
    for split, count in (("train.json", n_train), ("val_1.json", n_test)):
        for _ in range(count):
            video_id = "v_" + "".join(rng.choice(ID_ALPHABET) for _ in range(11))
            duration = round(rng.uniform(min_duration, max_duration), 2)
            width, height = rng.choice(sizes)
            colour = rng.choice(sorted(COLOURS))
            write_video(videos_dir / f"{video_id}.mp4", duration, width, height, fps, COLOURS[colour])
            annotations[split][video_id] = _random_segments(rng, duration, colour)
            if split == "val_1.json":
                annotations["val_2.json"][video_id] = _random_segments(rng, duration, colour)
    zip_path = Path(out_dir) / "captions.zip"
    write_captions_zip(zip_path, annotations)
    return SyntheticSource(zip_path, videos_dir, annotations)


def write_captions_zip(zip_path: Path, annotations: dict[str, dict | bytes]) -> None:
    """Zip annotation files as the official ``captions.zip`` lays them out."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in annotations.items():
            # a fixed timestamp: the same annotations make the same bytes, so DVC sees no change
            member = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(member, content if isinstance(content, bytes) else json.dumps(content), zipfile.ZIP_DEFLATED)
    with atomic_path(zip_path) as tmp:
        tmp.write_bytes(buffer.getvalue())


@dataclass(frozen=True)
class SyntheticCoco:
    captions_path: Path  # a zip, as COCO's caption files are distributed
    images_root: Path  # holds each image's ``file``
    files: dict[int, str]  # image id -> file


def make_coco_source(out_dir: Path, n_images: int = 12, fmt: str = "karpathy", seed: int = 0,
                     sizes: tuple[tuple[int, int], ...] = ((640, 480), (480, 640), (640, 427), (500, 375))) -> SyntheticCoco:
    """JPEG images under ``images/`` and their captions (1-5 each) in the ``karpathy``
    (``caption_datasets.zip`` with ``dataset_coco.json``) or ``official`` format
    (``annotations.zip`` with ``captions_train2017.json`` and ``captions_val2017.json``)."""
    from PIL import Image

    rng = random.Random(seed)
    root = Path(out_dir) / "images"
    files, karpathy, official = {}, [], {"train2017": ([], []), "val2017": ([], [])}
    for n in range(n_images):
        image_id = 1000 + 37 * n
        colour = rng.choice(sorted(COLOURS))
        captions = [f"a {colour} picture with a bar code, take {k}" for k in range(rng.randint(1, 5))]
        if fmt == "karpathy":
            split = ("train", "restval", "val", "test")[n % 4]
            folder = "train2014" if split in ("train", "restval") else "val2014"
            filename = f"COCO_{folder}_{image_id:012d}.jpg"
            karpathy.append({"cocoid": image_id, "filepath": folder, "filename": filename, "split": split,
                             "sentences": [{"raw": c, "tokens": c.split()} for c in captions]})
        else:
            folder, filename = ("train2017", "val2017")[n % 2], f"{image_id:012d}.jpg"
            images, annotations = official[folder]
            images.append({"id": image_id, "file_name": filename})
            annotations += [{"id": 10 * image_id + k, "image_id": image_id, "caption": c} for k, c in enumerate(captions)]
        files[image_id] = f"{folder}/{filename}"
        width, height = rng.choice(sizes)
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(draw_frame(image_id, width, height, COLOURS[colour])).save(root / files[image_id], quality=92)
    if fmt == "karpathy":
        members = {"dataset_coco.json": {"images": karpathy, "dataset": "coco"}}
        zip_path = Path(out_dir) / "caption_datasets.zip"
    else:
        members = {f"annotations/captions_{split}.json": {"images": images, "annotations": annotations}
                   for split, (images, annotations) in official.items()}
        zip_path = Path(out_dir) / "annotations.zip"
    write_captions_zip(zip_path, members)
    return SyntheticCoco(zip_path, root, files)
