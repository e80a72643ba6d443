"""Training samples straight from the Parquet datasets, and their batches.

A sample is a clip: its frames' CLIP embeddings ``[n, D]``, their times in seconds from the clip's
start ``[n]``, and one caption. An ActivityNet clip is a segment: the frames of its video's shard
with ``start <= t < end`` (only the row groups holding them are decoded); a COCO sample is one
caption of an image, a one-frame clip at time 0. Only the small tables (segments, captions) are
held in memory; shards are read on demand (COCO's through a small cache), so memory does not grow
with the dataset. Nothing is pickled.
"""

from __future__ import annotations

from collections.abc import Iterator
from queue import Queue
from threading import Thread
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from clipmemcap.core.layout import MANIFEST, ActivityNetPaths, CocoPaths, read_manifest
from clipmemcap.core.shards import read_frames, read_image_shard, verify_digests
from clipmemcap.model.captioner import Batch


@dataclass(frozen=True)
class Sample:
    key: tuple  # (video_id, segment) or (image_id, caption index)
    frames: np.ndarray  # [n, D] float32
    times: np.ndarray  # [n] float32, seconds from the clip's start
    caption: str
    events: np.ndarray | None = None  # [n] int: each frame's event number (0: none), where known (EventClips)


def _verified(root: Path, relatives: set[str], rebuild: str) -> None:
    """The files this dataset reads match the manifest's digests (a damaged, changed or deleted
    shard is named here, not found out mid-training)."""
    files = read_manifest(root).get("files")
    if files is None:
        raise ValueError(f"{root / MANIFEST} records no file digests (an older dataset): rebuild it ({rebuild})")
    verify_digests(root, {relative: files.get(relative, "not in the manifest") for relative in sorted(relatives)},
                   rebuild)


class ActivityNetClips:
    def __init__(self, paths: ActivityNetPaths, split: str):
        table = paths.segments_table(split)
        _verified(paths.out, {str(table.relative_to(paths.out))}, "dvc repro activitynet")
        self.rows = pq.read_table(table, page_checksum_verification=True).to_pylist()
        shards = {paths.frame_shard(row["video_id"]).relative_to(paths.out).as_posix() for row in self.rows}
        _verified(paths.out, shards, "dvc repro activitynet")
        self.paths = paths

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Sample:
        row = self.rows[i]
        # stored times are float32 and compared as such, so boundary frames stay where ingest put them
        times, embeddings = read_frames(self.paths.frame_shard(row["video_id"]), row["start"], row["end"])
        return Sample((row["video_id"], row["segment"]), embeddings, times - np.float32(row["start"]), row["caption"])


def reference_rows(paths: ActivityNetPaths, name: str) -> list[dict]:
    """A further reference set of the test videos (``references/<name>.parquet``, e.g. val_2):
    segment rows without frames, for the official evaluation."""
    table = paths.references_table(name)
    _verified(paths.out, {str(table.relative_to(paths.out))}, "dvc repro activitynet")
    return pq.read_table(table, page_checksum_verification=True).to_pylist()


def oracle_frames(times: np.ndarray, events: list[float], event_s: float, window: int) -> np.ndarray:
    """Indices of at most ``window`` frames of a clip (frame times [n], seconds) that show every
    event (start times, each ``event_s`` long): the frames the ``uniform`` policy picks, each
    unseen event's middle frame put in place of the nearest pick that shows no event."""
    n = len(times)
    if n <= window:
        return np.arange(n)
    picks = np.round(np.arange(window) * (n - 1) / max(window - 1, 1)).astype(int)
    shows = lambda start: (times[picks] >= start) & (times[picks] < start + event_s)  # noqa: E731
    kept = np.any([shows(start) for start in events], axis=0)  # picks that show an event stay
    for start in events:
        if shows(start).any():
            continue
        middle = int(np.argmin(np.abs(times - (start + event_s / 2))))
        slot = min(np.flatnonzero(~kept), key=lambda i: abs(picks[i] - middle))
        picks[slot], kept[slot] = middle, True
    return np.unique(picks)


def frame_events(times: np.ndarray, events: list[float], event_s: float) -> np.ndarray:
    """Each frame's event number [n] (1 for the clip's first event, ...; 0: none): the frames at
    times in [start, start + event_s) of an event (what :func:`oracle_frames` counts as showing it)."""
    numbers = np.zeros(len(times), np.int64)
    for number, start in enumerate(events, 1):
        numbers[(times >= start) & (times < start + event_s)] = number
    return numbers


class EventClips:
    """Clips with each frame's event (:func:`frame_events`): the benchmark's, whose event times it
    knows. A memory's oracle read and its diagnostics use them; no other mapper does."""

    def __init__(self, clips: ActivityNetClips, events: dict[tuple[str, int], list[float]], event_s: float):
        self.clips, self.rows, self.events, self.event_s = clips, clips.rows, events, event_s

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> Sample:
        sample = self.clips[i]
        if sample.key not in self.events:
            raise KeyError(f"no event times for clip {sample.key}: events need the benchmark's clips")
        return Sample(sample.key, sample.frames, sample.times, sample.caption,
                      frame_events(sample.times, self.events[sample.key], self.event_s))


class OracleClips:
    """Clips cut down to the frames that show their events (:func:`oracle_frames`): the ``oracle``
    frames of a run, which needs each clip's event times (the benchmark knows them)."""

    def __init__(self, clips: ActivityNetClips, events: dict[tuple[str, int], list[float]], event_s: float,
                 window: int):
        self.clips, self.rows, self.events, self.event_s, self.window = clips, clips.rows, events, event_s, window

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> Sample:
        sample = self.clips[i]
        if sample.key not in self.events:
            raise KeyError(f"no event times for clip {sample.key}: oracle frames need the benchmark's clips")
        index = oracle_frames(sample.times, self.events[sample.key], self.event_s, self.window)
        return Sample(sample.key, sample.frames[index], sample.times[index], sample.caption)


class CocoCaptions:
    def __init__(self, paths: CocoPaths, splits: tuple[str, ...]):
        _verified(paths.out, {"captions.parquet"}, "dvc repro coco")
        rows = [r for r in pq.read_table(paths.captions, page_checksum_verification=True).to_pylist()
                if r["split"] in splits]
        self.rows = [{**row, "index": i} for i, row in enumerate(rows)]
        self.span = read_manifest(paths.out)["shard_span"]
        self.paths = paths
        shards = {paths.shard(row["image_id"] // self.span).relative_to(paths.out).as_posix() for row in self.rows}
        _verified(paths.out, shards, "dvc repro coco")
        self.read = lru_cache(maxsize=8)(self._read_shard)  # the last few shards, by path

    @staticmethod
    def _read_shard(path: Path) -> dict[int, np.ndarray]:
        ids, embeddings = read_image_shard(path)
        return dict(zip(ids.tolist(), embeddings))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Sample:
        row = self.rows[i]
        shard = self.read(self.paths.shard(row["image_id"] // self.span))
        return Sample((row["image_id"], row["index"]), shard[row["image_id"]][None], np.zeros(1, np.float32),
                      row["caption"])


def frame_statistics(data, ridge: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and ZCA whitening matrix [D, D] of the frames of ``data``'s samples, each image
    (or video: its first clip) counted once, though a COCO image has several captions.

    ``(x - mean) @ whitening`` has identity covariance in every direction whose variance is well
    above ``ridge`` times the mean variance; weaker directions (float16 rounding noise in a
    random CLIP's embeddings) are damped instead of amplified."""
    seen, total, products, count = set(), 0.0, 0.0, 0
    for i in range(len(data)):
        sample = data[i]
        if sample.key[0] in seen:
            continue
        seen.add(sample.key[0])
        frames = sample.frames.astype(np.float64)
        total, products, count = total + frames.sum(0), products + frames.T @ frames, count + len(frames)
    if not count:
        raise ValueError("no frames to take statistics of: the training data is empty")
    mean = total / count
    covariance = products / count - np.outer(mean, mean)
    variances, axes = np.linalg.eigh(covariance)
    floor = ridge * max(float(np.trace(covariance)) / len(covariance), np.finfo(np.float32).tiny)
    whitening = axes @ np.diag((np.maximum(variances, 0.0) + floor) ** -0.5) @ axes.T
    return mean.astype(np.float32), whitening.astype(np.float32)


def collate(samples: list[Sample], tokenizer, max_tokens: int) -> Batch:
    """Pad clips and captions of one batch; captions are cut at ``max_tokens`` tokens."""
    T = max(len(s.frames) for s in samples)
    D = samples[0].frames.shape[1]
    frames, times = np.zeros((len(samples), T, D), np.float32), np.zeros((len(samples), T), np.float32)
    events = np.zeros((len(samples), T), np.int64)
    for i, s in enumerate(samples):
        frames[i, : len(s.frames)], times[i, : len(s.times)] = s.frames, s.times
        if s.events is not None:
            events[i, : len(s.events)] = s.events
    ids = [seq[:max_tokens] for seq in tokenizer([s.caption for s in samples])["input_ids"]]
    S = max(1, max(map(len, ids)))
    tokens = torch.zeros(len(samples), S, dtype=torch.long)
    mask = torch.zeros(len(samples), S, dtype=torch.long)
    for i, seq in enumerate(ids):
        tokens[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq, dtype=torch.long), 1
    return Batch([s.key for s in samples], torch.from_numpy(frames), torch.from_numpy(times),
                 torch.tensor([len(s.frames) for s in samples]), tokens, mask, torch.from_numpy(events))


def epoch_order(size: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a permutation fixed by (seed, epoch), so a resumed run
    sees exactly the batches an uninterrupted one would."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=generator).tolist()


def prefetch(items: Iterator, depth: int = 2) -> Iterator:
    """``items`` produced on a background thread, up to ``depth`` ahead, so that reading and
    collating the next batches overlaps the training step (Parquet decoding releases the GIL)."""
    queue: Queue = Queue(maxsize=depth)
    done = object()

    def produce() -> None:
        try:
            for item in items:
                queue.put(item)
        except BaseException as err:  # handed to the consumer, which re-raises it
            queue.put(err)
        queue.put(done)

    Thread(target=produce, daemon=True, name="prefetch").start()
    while (item := queue.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
