"""The embedding pipeline: decode on background threads while the calling thread runs CLIP.

:func:`embed_stream` is the pipeline for any kind of job (a video, a batch of images);
:func:`embed_videos` runs it over videos' grid frames. Decoding the next jobs overlaps embedding
of the current one, and frames stream through in blocks: a video's memory cost is a few blocks,
however long it is.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from clipmemcap.core.atomic import remove_stale_temporaries, write_json
from clipmemcap.frames.clip_encoder import ClipEncoder
from clipmemcap.core.layout import ENCODER_SETTINGS, ActivityNetPaths, UnsafePath, inside
from clipmemcap.core.shards import write_frame_shard
from clipmemcap.frames.ffmpeg_frames import DecodeError, decode_images, decode_range
from clipmemcap.core.failures import Failure

log = logging.getLogger(__name__)
# Beside the shards it describes; the leading underscore keeps pyarrow.dataset from reading it.


@dataclass(frozen=True)
class VideoJob:
    video_id: str
    path: Path
    frames: tuple[range, ...]  # grid frame numbers to embed (t = k / fps), one decode per range


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
Job = TypeVar("Job")


@dataclass(frozen=True)
class _JobFailed:
    failure: Failure


def embed_stream(jobs: Iterable[Job | Failure], encoder: ClipEncoder,
                 decode: Callable[[Job], Iterator[np.ndarray | Failure]], key: Callable[[Job], str],
                 workers: int = 2, prefetch_blocks: int = 4) -> Iterator[tuple[Job, np.ndarray] | Failure]:
    """For each job, in order: ``(job, embeddings [n, D])`` of the uint8 frame blocks that
    ``decode(job)`` yields, or a Failure when decoding raises DecodeError. Failures passed in,
    and failures of single items that ``decode`` yields (a corrupt image in a batch), come out
    in place, so callers keep one ordered stream of outcomes.

    Up to ``workers`` jobs are decoded at once, each on its own thread, while this thread runs
    CLIP; each holds at most ``prefetch_blocks`` blocks, so memory stays bounded."""
    stop = threading.Event()
    in_flight = _Pipe(stop)  # (job, its block pipe) or Failure, in job order; None ends it
    slots = threading.Semaphore(workers)

    def run_decode(job: Job, blocks: _Pipe) -> None:
        try:
            for block in decode(job):
                if not blocks.put(block):
                    return
            blocks.put(_DONE)
        except DecodeError as err:
            blocks.put(_JobFailed(Failure(key(job), "decode", str(err))))
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
                threading.Thread(target=run_decode, args=(job, blocks), name=f"decode-{key(job)}",
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
            while (block := blocks.get()) is not _DONE:
                if isinstance(block, np.ndarray):
                    embedded.append(encoder.encode(block))
                elif isinstance(block, Failure):
                    yield block
                else:
                    break
            slots.release()
            if isinstance(block, BaseException):
                raise block
            if isinstance(block, _JobFailed):
                yield block.failure
            else:
                yield job, (np.concatenate(embedded) if embedded else np.zeros((0, encoder.embed_dim), np.float32))
    finally:
        stop.set()
        feeder.join()


def embed_videos(jobs: Iterable[VideoJob | Failure], encoder: ClipEncoder, fps: float,
                 decode_workers: int = 2, ffmpeg_threads: int = 1,
                 prefetch_blocks: int = 4) -> Iterator[Embedded | Failure]:
    """:func:`embed_stream` over videos: each job's grid frames, decoded once per merged range."""

    def decode(job: VideoJob) -> Iterator[np.ndarray]:
        for frames in job.frames:
            yield from decode_range(job.path, frames, fps, encoder.image_size, encoder.batch_size, ffmpeg_threads)

    for out in embed_stream(jobs, encoder, decode, lambda job: job.video_id, decode_workers, prefetch_blocks):
        if isinstance(out, Failure):
            yield out
            continue
        job, embeddings = out
        times = np.concatenate([np.arange(r.start, r.stop) for r in job.frames]) / fps
        yield Embedded(job.video_id, times, embeddings)


def encoder_settings(encoder: ClipEncoder, dtype: str, **extra) -> dict:
    """What an embedding depends on; shards made with other settings must not be mixed in."""
    return {"model": encoder.name, "pretrained": encoder.pretrained, "weights": encoder.weights_digest(),
            "image_size": encoder.image_size, "embed_dim": encoder.embed_dim, "embedding_dtype": dtype, **extra}


def prepare_shard_dir(shard_dir: Path, settings: dict, work_dirs: tuple[Path, ...]) -> None:
    """Sweep leftovers of killed writers from ``work_dirs``; drop shards made with other encoder
    settings (they would silently mix two embedding spaces); record the settings in use."""
    removed = sum(remove_stale_temporaries(folder) for folder in work_dirs)
    if removed:
        log.info("removed %d partial files left by an interrupted run", removed)
    record = shard_dir / ENCODER_SETTINGS
    if record.exists() and json.loads(record.read_text()) != settings:
        stale = list(shard_dir.glob("*.parquet"))
        log.warning("encoder settings changed (%s -> %s): removing %d shards",
                    json.loads(record.read_text()), settings, len(stale))
        for path in stale:
            path.unlink()
    write_json(record, settings)


def remove_download(paths: ActivityNetPaths, video_id: str) -> None:
    for path in paths.videos.glob(f"{video_id}.*"):
        path.unlink()


def save_frames(outcomes: Iterable[Embedded | Failure], paths: ActivityNetPaths, dtype: str,
                keep_videos: bool) -> Iterator[str | Failure]:
    """Write each embedded video's shard (and drop its download unless ``keep_videos``); yields
    its id, or the Failure. A video that failed to decode is removed, so the next run fetches it
    afresh."""
    for outcome in outcomes:
        if isinstance(outcome, Embedded):
            write_frame_shard(paths.frame_shard(outcome.video_id), outcome.video_id, outcome.times,
                              outcome.embeddings, dtype)
            if not keep_videos:
                remove_download(paths, outcome.video_id)
            yield outcome.video_id
        else:
            if outcome.stage == "decode":
                remove_download(paths, outcome.key)
            yield outcome


@dataclass(frozen=True)
class ImageBatch:
    images: tuple  # each with ``image_id`` and ``file`` (its path under the images root)
    paths: tuple[Path, ...]


def embed_images(batches: Iterable[tuple[list, list[Failure]]], root: Path, encoder: ClipEncoder, max_pixels: int,
                 decode_workers: int, ffmpeg_threads: int, refetch_broken: bool) -> tuple[np.ndarray, np.ndarray, list[Failure]]:
    """Embed batches of images (each with ``image_id`` and ``file``, found under ``root``), each
    batch given with the failures of its download: (ids [n], embeddings [n, D], failures). An
    image whose file is missing, or that fails to decode, is a failure; with ``refetch_broken`` a
    file that failed to decode is removed, so the next run downloads it afresh."""

    def jobs() -> Iterator[ImageBatch | Failure]:
        for batch, download_failures in batches:
            failed = {f.key for f in download_failures}
            yield from download_failures
            for image in batch:
                key = str(image.image_id)
                if key in failed:
                    continue
                try:
                    if not inside(root, image.file).exists():
                        failed.add(key)
                        yield Failure(key, "download", f"{image.file} not found under {root.name}/")
                except UnsafePath as err:
                    failed.add(key)
                    yield Failure(key, "download", str(err))
            ready = tuple(image for image in batch if str(image.image_id) not in failed)
            if ready:
                files.update((str(image.image_id), image.file) for image in ready)
                yield ImageBatch(ready, tuple(inside(root, image.file) for image in ready))

    def decode(job: ImageBatch):
        return decode_images([(str(image.image_id), path) for image, path in zip(job.images, job.paths)],
                             encoder.image_size, max_pixels, ffmpeg_threads)

    ids, embeddings, failures, files = [], [], [], {}
    failed: set[str] = set()
    for outcome in embed_stream(jobs(), encoder, decode, lambda job: str(job.images[0].image_id), decode_workers):
        if isinstance(outcome, Failure):
            failures.append(outcome)
            failed.add(outcome.key)
            if outcome.stage == "decode" and refetch_broken:  # a file this project downloaded
                inside(root, files[outcome.key]).unlink(missing_ok=True)
            continue
        job, batch_embeddings = outcome
        ids += [image.image_id for image in job.images if str(image.image_id) not in failed]
        embeddings.append(batch_embeddings)
    empty = np.zeros((0, encoder.embed_dim), np.float32)
    return np.array(ids, np.int64), np.concatenate([empty, *embeddings]), failures
