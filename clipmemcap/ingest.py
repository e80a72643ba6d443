"""Turn downloaded videos into frame-embedding shards, and finish a dataset's tables.

:func:`embed_videos` decodes on background threads while the calling thread runs CLIP, so
decoding the next videos overlaps embedding of the current one, and frames stream through in
blocks: a video's memory cost is a few blocks, however long it is.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipmemcap import shards
from clipmemcap.annotations import Video
from clipmemcap.atomic import remove_stale_temporaries, write_json
from clipmemcap.clip_encoder import ClipEncoder
from clipmemcap.decode import DecodeError, decode_range
from clipmemcap.failures import Failure
from clipmemcap.grid import grid_range, merge_ranges

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetPaths:
    """Outputs (DVC-tracked) under ``out``; downloads and the lock under ``cache``."""

    out: Path
    cache: Path

    @property
    def frames(self) -> Path:
        return self.out / "frames"

    @property
    def segments(self) -> Path:
        return self.out / "segments"

    @property
    def failures(self) -> Path:
        return self.out / "failures.parquet"

    @property
    def manifest(self) -> Path:
        return self.out / "manifest.json"

    @property
    def encoder_settings(self) -> Path:
        # Leading underscore: pyarrow.dataset and duckdb globs skip it.
        return self.frames / "_encoder.json"

    @property
    def videos(self) -> Path:
        return self.cache / "videos"

    @property
    def lock(self) -> Path:
        return self.cache / "run.lock"


def video_ranges(video: Video, fps: float) -> list[range]:
    return merge_ranges([grid_range(s.start, s.end, fps) for s in video.segments])


@dataclass(frozen=True)
class VideoJob:
    video: Video
    path: Path


@dataclass(frozen=True)
class Embedded:
    video_id: str
    times: np.ndarray  # [n] seconds, on the grid
    embeddings: np.ndarray  # [n, D] float32


class _Pipe:
    """A bounded hand-over between threads that gives up once ``stop`` is set, so no producer
    blocks forever after the consumer has gone."""

    def __init__(self, stop: threading.Event, size: int = 0):
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.stop = stop

    def put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self):
        return self.queue.get()


_DONE = object()


def embed_videos(jobs: Iterable[VideoJob | Failure], encoder: ClipEncoder, fps: float,
                 decode_workers: int = 2, ffmpeg_threads: int = 1,
                 prefetch_blocks: int = 4) -> Iterator[Embedded | Failure]:
    """For each job, in order: its grid frames' embeddings, or a Failure. Failures passed in are
    passed through in place, so callers keep one ordered stream of outcomes.

    Up to ``decode_workers`` videos are decoded at once (one ffmpeg each) while this thread runs
    CLIP; each holds at most ``prefetch_blocks`` blocks of frames, so memory stays bounded."""
    stop = threading.Event()
    in_flight = _Pipe(stop)  # (job, its block pipe) or Failure, in job order; None ends it
    slots = threading.Semaphore(decode_workers)
    size = encoder.image_size

    def decode(job: VideoJob, blocks: _Pipe) -> None:
        try:
            for frames in video_ranges(job.video, fps):
                for block in decode_range(job.path, frames, fps, size, encoder.batch_size, ffmpeg_threads):
                    if not blocks.put(block):
                        return
            blocks.put(_DONE)
        except DecodeError as err:
            blocks.put(Failure(job.video.video_id, "decode", str(err)))
        except BaseException as err:  # handed to the consumer, which re-raises it
            blocks.put(err)

    def feed() -> None:
        try:
            for job in jobs:  # may block on a download still running
                if isinstance(job, Failure):
                    in_flight.put(job)
                    continue
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                blocks = _Pipe(stop, prefetch_blocks)
                threading.Thread(target=decode, args=(job, blocks), name=f"decode-{job.video.video_id}",
                                 daemon=True).start()
                in_flight.put((job, blocks))
        except BaseException as err:
            in_flight.put(err)
        finally:
            in_flight.put(None)

    feeder = threading.Thread(target=feed, name="decode-feeder", daemon=True)
    feeder.start()
    try:
        while (item := in_flight.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Failure):
                yield item
                continue
            job, blocks = item
            embedded = []
            while isinstance(block := blocks.get(), np.ndarray):
                embedded.append(encoder.encode(block))
            slots.release()
            if isinstance(block, BaseException):
                raise block
            if isinstance(block, Failure):
                yield block
                continue
            ranges = video_ranges(job.video, fps)
            times = np.concatenate([np.arange(r.start, r.stop) for r in ranges]) / fps
            yield Embedded(job.video.video_id, times, np.concatenate(embedded))
    finally:
        stop.set()
        feeder.join()


def encoder_settings(encoder: ClipEncoder, fps: float, dtype: str) -> dict:
    return {"model": encoder.name, "pretrained": encoder.pretrained, "image_size": encoder.image_size,
            "embed_dim": encoder.embed_dim, "embedding_dtype": dtype, "fps": fps}


def prepare_frames_dir(paths: DatasetPaths, settings: dict) -> None:
    """Sweep leftovers of killed writers; drop shards made with other encoder settings (they
    would silently mix two embedding spaces)."""
    removed = remove_stale_temporaries(paths.out) + remove_stale_temporaries(paths.cache)
    if removed:
        log.info("removed %d partial files left by an interrupted run", removed)
    if paths.encoder_settings.exists():
        previous = json.loads(paths.encoder_settings.read_text())
        if previous != settings:
            stale = list(paths.frames.glob("*.parquet"))
            log.warning("encoder settings changed (%s -> %s): removing %d frame shards",
                        previous, settings, len(stale))
            for path in stale:
                path.unlink()
    write_json(paths.encoder_settings, settings)


def write_dataset_tables(paths: DatasetPaths, chosen: dict[str, list[Video]], failures: list[Failure],
                         fps: float, manifest: dict) -> dict:
    """Segments per split, failures, and the manifest (written last: its presence means the
    dataset is complete). Shards of videos no longer chosen are removed so that ``frames/`` holds
    exactly the dataset."""
    keep = {v.video_id for videos in chosen.values() for v in videos}
    for path in paths.frames.glob("*.parquet"):
        if path.stem not in keep:
            log.info("removing shard of %s: not in the selected subset", path.stem)
            path.unlink()
    segment_counts = {}
    for split, videos in chosen.items():
        rows = [{"video_id": v.video_id, "segment": s.index, "start": s.start, "end": s.end,
                 "caption": s.caption, "split": split}
                for v in sorted(videos, key=lambda v: v.video_id) for s in v.segments]
        shards.write_segments(paths.segments / f"{split}.parquet", rows)
        segment_counts[split] = len(rows)
    shards.write_failures(paths.failures, failures)
    frames = sum(len(r) for videos in chosen.values() for v in videos for r in video_ranges(v, fps))
    manifest = {**manifest, "schema_version": shards.SCHEMA_VERSION,
                "counts": {"videos": {s: len(v) for s, v in chosen.items()},
                           "segments": segment_counts, "frames": frames, "failures": len(failures)}}
    write_json(paths.manifest, manifest)
    return manifest
