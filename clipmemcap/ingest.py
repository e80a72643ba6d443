"""Turn downloaded videos into frame-embedding shards, and finish a dataset's tables.

:func:`embed_videos` decodes on a background thread while the main thread runs CLIP, so decoding
the next video overlaps embedding of the current one, and frames stream through in blocks: a
video's memory cost is one block, however long it is.
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


def embed_videos(jobs: Iterable[VideoJob | Failure], encoder: ClipEncoder, fps: float,
                 prefetch_blocks: int = 4) -> Iterator[Embedded | Failure]:
    """For each job, in order: its grid frames' embeddings, or a Failure. Failures passed in are
    passed through in place, so callers can keep one ordered stream of outcomes."""
    blocks: queue.Queue = queue.Queue(maxsize=prefetch_blocks)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                blocks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def decode_all() -> None:
        try:
            for job in jobs:
                if isinstance(job, Failure):
                    put(job)
                    continue
                try:
                    for frames in video_ranges(job.video, fps):
                        for block in decode_range(job.path, frames, fps, encoder.image_size, encoder.batch_size):
                            if not put((job.video.video_id, block)):
                                return
                    put(job)
                except DecodeError as err:
                    put(Failure(job.video.video_id, "decode", str(err)))
        except BaseException as err:  # handed to the consumer, which re-raises it
            put(err)
        finally:
            put(None)

    producer = threading.Thread(target=decode_all, name="decode", daemon=True)
    producer.start()
    pending: list[np.ndarray] = []
    try:
        while (item := blocks.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Failure):
                pending.clear()
                yield item
            elif isinstance(item, VideoJob):
                ranges = video_ranges(item.video, fps)
                times = np.concatenate([np.arange(r.start, r.stop) for r in ranges]) / fps
                yield Embedded(item.video.video_id, times, np.concatenate(pending))
                pending.clear()
            else:
                pending.append(encoder.encode(item[1]))
    finally:
        stop.set()
        producer.join()


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
