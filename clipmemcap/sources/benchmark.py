"""The long-range benchmark: synthetic videos whose caption depends on short events far apart.

Each clip shows moving grey distractors on a dark background, and ``events`` short events at
random times: for ``event_s`` seconds a large shape of some colour appears (a red circle, a blue
square, ...). Its caption names the events in order: "a red circle, then a blue square." A
captioner gets it right only if it saw every event and knows their order, so on long clips a
model that sees W frames (or their mean) must fail where one with a memory over all frames need
not. Short control clips (at most one chunk of W frames) are mixed into every split: there every
model sees every frame and memory cannot help.

:func:`write_sources` (the ``benchmark`` stage: ``python -m clipmemcap.sources.benchmark``) writes real h264 videos, each holding ``clips_per_video`` clips back to back
(its captioned segments, as in ActivityNet), an official-format ``captions.zip``, and one-event
still images in COCO's format for pre-training; the flows ingest them like the real datasets.
BenchmarkVideo ids derive from the settings, the number of videos and the drawing code's version, so
changed settings never reuse an old video's frames.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clipmemcap.core.config import BenchmarkConfig, SubsetConfig, run_command, settings_parser
from clipmemcap.core.layout import BenchmarkPaths, Layout
from clipmemcap.sources.synthetic import encode_mp4, write_captions_zip

PALETTE = {"red": (225, 35, 35), "green": (35, 190, 60), "blue": (40, 80, 235), "yellow": (235, 215, 35),
           "magenta": (215, 45, 215), "cyan": (40, 210, 225)}
SHAPES = ("circle", "square", "triangle", "cross")
BACKGROUND = 28
VERSION = 3  # of the drawing and encoding code: part of every video id, so a change makes new videos


def _shape_mask(shape: str, side: int) -> np.ndarray:
    """[side, side] bool mask of a shape filling its box."""
    y, x = np.mgrid[0:side, 0:side] + 0.5
    c = side / 2
    if shape == "circle":
        return (x - c) ** 2 + (y - c) ** 2 <= c**2
    if shape == "square":
        return np.ones((side, side), bool)
    if shape == "triangle":  # apex up
        return np.abs(x - c) <= y / 2
    if shape == "cross":
        bar = side / 3
        return (np.abs(x - c) <= bar / 2) | (np.abs(y - c) <= bar / 2)
    raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")


class Clip:
    """One clip's plan: duration, distractor paths and events; :meth:`frame` draws the picture at
    ``t`` seconds from the clip's start."""

    def __init__(self, rng: random.Random, duration: float, cfg: BenchmarkConfig):
        self.duration, self.cfg = duration, cfg
        size = cfg.frame_size
        kinds = [(c, s) for c in cfg.colours for s in cfg.shapes]
        self.kinds = rng.sample(kinds, cfg.events)  # distinct, so their order matters
        self.starts = _event_starts(rng, duration, cfg.events, cfg.event_s, cfg.min_gap_s)
        side = round(cfg.event_size * size)
        self.event_boxes = [(rng.randint(0, size - side), rng.randint(0, size - side)) for _ in self.kinds]
        self.event_masks = [_shape_mask(shape, side) for _, shape in self.kinds]
        d = round(cfg.distractor_size * size)
        self.distractors = [
            (rng.uniform(0, size - d), rng.uniform(0, size - d), rng.uniform(-1, 1) * size / 4,
             rng.uniform(-1, 1) * size / 4, rng.randint(90, 200), _shape_mask(rng.choice(SHAPES), d))
            for _ in range(cfg.distractors)]

    @property
    def caption(self) -> str:
        return ", then ".join(f"a {colour} {shape}" for colour, shape in self.kinds) + "."

    def frame(self, t: float) -> np.ndarray:
        size = self.cfg.frame_size
        image = np.full((size, size, 3), BACKGROUND, np.uint8)
        for x0, y0, vx, vy, grey, mask in self.distractors:  # straight lines, bouncing off the edges
            d = mask.shape[0]
            x, y = _bounce(x0 + vx * t, size - d), _bounce(y0 + vy * t, size - d)
            image[y : y + d, x : x + d][mask] = grey
        for (colour, _), start, (x, y), mask in zip(self.kinds, self.starts, self.event_boxes, self.event_masks):
            if start <= t < start + self.cfg.event_s:
                side = mask.shape[0]
                image[y : y + side, x : x + side][mask] = PALETTE[colour]
        return image


def _bounce(position: float, span: float) -> int:
    period = position % (2 * span)
    return int(period if period <= span else 2 * span - period)


def _event_starts(rng: random.Random, duration: float, count: int, length: float, gap: float) -> list[float]:
    """Sorted start times of ``count`` events of ``length`` s, at least ``gap`` s apart, uniform
    over the clip (by placing the free time at random between them)."""
    free = duration - count * length - (count - 1) * gap
    if free < 0:
        raise ValueError(f"a clip of {duration} s cannot hold {count} events of {length} s with gaps of {gap} s")
    cuts = sorted(rng.uniform(0, free) for _ in range(count))
    return [cut + i * (length + gap) for i, cut in enumerate(cuts)]


class BenchmarkVideo:
    """Clips back to back, as an ActivityNet video holds its captioned segments."""

    def __init__(self, clips: list[Clip], fps: int):
        self.clips, self.fps = clips, fps
        self.starts = np.cumsum([0.0] + [clip.duration for clip in clips])  # [clips + 1]
        self.duration = float(self.starts[-1])

    def segments(self) -> list[list[float]]:
        return [[round(float(a), 3), round(float(b), 3)] for a, b in zip(self.starts, self.starts[1:])]

    def frame(self, n: int) -> np.ndarray:
        t = n / self.fps
        i = min(int(np.searchsorted(self.starts, t, side="right")) - 1, len(self.clips) - 1)
        return self.clips[i].frame(t - self.starts[i])


def write_video(path: Path, video: BenchmarkVideo, size: int) -> None:
    """Encode the video through ffmpeg, one encoder thread (videos are written two at a time)."""
    frames = (video.frame(n) for n in range(math.ceil(round(video.duration * video.fps, 6))))  # through the last instant
    encode_mp4(path, frames, size, size, video.fps, crf=20, options=("-threads", "1"))


# What a video's pictures do not depend on: the pre-training images' count, whether the DAG builds
# them, and the further test sets (whose own ranges go into their videos' ids, through their file).
_VIDEO_SETTINGS = {"pretrain_images", "build", "test_lengths", "length_test_videos"}


def _video_id(cfg: BenchmarkConfig, file: str, index: int) -> str:
    """Each file draws its videos from its own random stream, so a video's content depends on the
    settings, its file and its place in it, never on how many videos a file holds."""
    settings = cfg.model_dump_json(exclude=_VIDEO_SETTINGS)
    return f"v_{hashlib.sha256(f'{VERSION}|{settings}|{file}|{index}'.encode()).hexdigest()[:11]}"


def plan(cfg: BenchmarkConfig, subset: SubsetConfig) -> dict[str, dict[str, BenchmarkVideo]]:
    """Videos per annotation file, as many as the ActivityNet subset settings ask for:
    ``train.json`` (train and val videos) and ``val_1.json`` (test videos). Every
    ``1 / short_fraction``-th clip of ``train.json`` (``1 / test_short_fraction``-th of
    ``val_1.json``) is a short control clip. Clip lengths are whole video frames, so segment
    boundaries fall between frames.

    The test file is a fixed test set: its own random stream, so the same test videos (same ids,
    same bytes) whatever the training size or any training setting; ``test_videos`` only says how
    many of them, and a larger test set starts with the smaller one. So is each further test set
    of ``test_lengths`` (``test-<name>.json``: ``length_test_videos`` videos of long clips only,
    in its length range)."""
    counts = {"train.json": (subset.train_videos + math.ceil(subset.val_fraction * subset.train_videos),
                             cfg.short_fraction, cfg.seed, cfg.long_s, "train.json"),
              "val_1.json": (subset.test_videos, cfg.test_short_fraction, f"{cfg.seed}:val_1.json", cfg.long_s,
                             "val_1.json")}
    for split, span in cfg.test_sets().items():
        file = f"{split}.json"
        counts[file] = cfg.length_test_videos, 0.0, f"{cfg.seed}:{file}", span, f"{file}:{span[0]:g}-{span[1]:g}"
    files: dict[str, dict[str, BenchmarkVideo]] = {}
    for name, (count, short_fraction, seed, long_s, stream) in counts.items():
        rng, every = random.Random(seed), round(1 / short_fraction) if short_fraction else 0
        files[name], index = {}, 0
        for number in range(count):
            clips = []
            for _ in range(cfg.clips_per_video):
                low, high = cfg.short_s if every and index % every == 0 else long_s
                duration = round(rng.uniform(low, high) * cfg.video_fps) / cfg.video_fps
                clips.append(Clip(rng, duration, cfg))
                index += 1
            files[name][_video_id(cfg, stream, number)] = BenchmarkVideo(clips, cfg.video_fps)
    return files


def planned_clips(cfg: BenchmarkConfig, subset: SubsetConfig) -> dict[tuple[str, int], Clip]:
    """Every clip of every file, by (video id, segment)."""
    return {(video_id, segment): clip for videos in plan(cfg, subset).values()
            for video_id, video in videos.items() for segment, clip in enumerate(video.clips)}



def event_starts(cfg: BenchmarkConfig, subset: SubsetConfig) -> dict[tuple[str, int], list[float]]:
    """Every clip's event start times, seconds from the clip's start, by (video id, segment)."""
    return {key: list(clip.starts) for key, clip in planned_clips(cfg, subset).items()}

def write_images(cfg: BenchmarkConfig, out_dir: Path) -> None:
    """The pre-training set, in COCO's Karpathy format: still frames that each show one event
    among the distractors, captioned "a red circle." (a tenth of them in the ``val`` split)."""
    from PIL import Image

    rng = random.Random(f"{cfg.seed}:images")
    one_event = cfg.model_copy(update={"events": 1})
    entries = []
    for n in range(cfg.pretrain_images):
        clip = Clip(rng, cfg.event_s, one_event)
        image_id, split = n + 1, "val" if n % 10 == 9 else "train"
        filename = f"{image_id:06d}.jpg"
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(clip.frame(rng.uniform(0, cfg.event_s))).save(out_dir / split / filename, quality=95)
        entries.append({"cocoid": image_id, "filepath": split, "filename": filename, "split": split,
                        "sentences": [{"raw": clip.caption, "tokens": clip.caption.rstrip(".").split()}]})
    write_captions_zip(out_dir / "caption_datasets.zip", {"dataset_coco.json": {"images": entries, "dataset": "coco"}})


def write_sources(cfg: BenchmarkConfig, subset: SubsetConfig, paths: BenchmarkPaths, workers: int = 2) -> dict:
    """Write the benchmark's sources: ``videos/<id>.mp4`` and ``captions.zip`` (ActivityNet
    format; a segment per clip; the further test sets as ``test-<name>.json``), ``images/`` with ``caption_datasets.zip`` (COCO format, for
    pre-training) and ``source.json`` (a summary). Videos already there with the same settings
    (hence the same id) are kept."""
    files = plan(cfg, subset)
    paths.videos.mkdir(parents=True, exist_ok=True)
    videos = {video_id: video for file in files.values() for video_id, video in file.items()}
    for stale in paths.videos.glob("*.mp4"):  # videos of earlier settings
        if stale.stem not in videos:
            stale.unlink()
    todo = [(video_id, video) for video_id, video in videos.items() if not paths.video(video_id).exists()]
    with ThreadPoolExecutor(workers) as pool:  # one ffmpeg per worker; drawing is numpy
        list(tqdm(pool.map(lambda job: write_video(paths.video(job[0]), job[1], cfg.frame_size), todo),
                  total=len(todo), desc="benchmark videos", unit="video"))
    annotations = {name: {video_id: {"duration": video.duration, "timestamps": video.segments(),
                                     "sentences": [clip.caption for clip in video.clips]}
                          for video_id, video in file.items()}
                   for name, file in files.items()}
    annotations["val_2.json"] = {}
    write_captions_zip(paths.captions_zip, annotations)
    shutil.rmtree(paths.images, ignore_errors=True)
    write_images(cfg, paths.images)
    durations = [clip.duration for video in videos.values() for clip in video.clips]
    summary = {"settings": cfg.model_dump(mode="json"), "videos": len(videos), "clips": len(durations),
               "short_clips": sum(d <= cfg.short_s[1] for d in durations), "hours": round(sum(durations) / 3600, 3),
               "images": cfg.pretrain_images}
    paths.source.write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    """``python -m clipmemcap.sources.benchmark``: the benchmark stage."""
    def work(args, cfg) -> None:
        summary = write_sources(cfg.benchmark, cfg.activitynet.subset, Layout.of(cfg).benchmark)
        print(json.dumps({k: v for k, v in summary.items() if k != "settings"}, indent=2))

    run_command(settings_parser(__doc__, prog="python -m clipmemcap.sources.benchmark"), work, argv)


if __name__ == "__main__":
    main()
