"""Seeded subset selection with replacement of failed candidates.

Candidates are shuffled once with a seed; they are tried in that order, and each one that is
processed successfully fills the first split of its stream that still has room. A candidate that
fails is replaced by the next in order, so the requested counts are counts of *usable* videos.
The result depends only on the seed and on which candidates fail, never on timing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from clipmemcap.sources.activitynet import Video
from clipmemcap.core.config import SubsetConfig
from clipmemcap.core.failures import Failure


def seeded_order(videos: dict[str, Video], seed: str) -> list[Video]:
    ids = sorted(videos)
    random.Random(seed).shuffle(ids)
    return [videos[i] for i in ids]


@dataclass
class Stream:
    """Candidates of one annotation file and the splits they fill, in order."""

    candidates: list[Video]
    quotas: dict[str, int]  # split -> videos wanted; filled in insertion order
    position: int = 0
    chosen: dict[str, list[Video]] = field(default_factory=dict)

    def __post_init__(self):
        for split in self.quotas:  # every split gets a table, even an empty one
            self.chosen.setdefault(split, [])

    def missing(self) -> int:
        return sum(self.quotas.values()) - sum(len(v) for v in self.chosen.values())

    def next_wave(self) -> list[Video]:
        """As many untried candidates as videos are still missing (never more, so no video is
        processed that could not be used)."""
        wave = self.candidates[self.position : self.position + self.missing()]
        self.position += len(wave)
        return wave

    def accept(self, video: Video) -> str:
        for split, quota in self.quotas.items():
            members = self.chosen[split]
            if len(members) < quota:
                members.append(video)
                return split
        raise RuntimeError(f"{video.video_id} accepted after every split was full")

    def exhausted(self) -> bool:
        return self.position >= len(self.candidates)

    def shortfall(self) -> dict[str, int]:
        return {s: q - len(self.chosen[s]) for s, q in self.quotas.items() if q > len(self.chosen[s])}


def plan_streams(train: dict[str, Video], test: dict[str, Video], cfg: SubsetConfig,
                 further: dict[str, dict[str, Video]] | None = None) -> list[Stream]:
    """train + val (disjoint, both from train.json) and test (from val_1.json); and each further
    test set whole (``further``: split -> the videos of its file)."""
    val_videos = math.ceil(cfg.val_fraction * cfg.train_videos)
    return [
        Stream(seeded_order(train, f"{cfg.seed}:train.json"), {"train": cfg.train_videos, "val": val_videos}),
        Stream(seeded_order(test, f"{cfg.seed}:val_1.json"), {"test": cfg.test_videos}),
        *(Stream(seeded_order(videos, f"{cfg.seed}:{split}.json"), {split: len(videos)})
          for split, videos in (further or {}).items()),
    ]


def fill(stream: Stream, finished: Callable[[Video], bool], process: Callable[[list[Video]], Iterable[str | Failure]],
         accepted: Callable[[Video], None] = lambda video: None) -> list[Failure]:
    """Process the stream's candidates in waves until its splits are full or its candidates run
    out; returns the failures. ``finished(video)``: an earlier run already did it (it is not
    processed again); ``process(videos)`` yields, for each video, its id when it succeeded or its
    Failure, in any order. Videos are accepted in candidate order, whatever order the work
    finished in, so the subset depends only on the seed and on which candidates fail."""
    failures = []
    while stream.missing() and not stream.exhausted():
        wave = stream.next_wave()
        succeeded = {video.video_id for video in wave if finished(video)}
        for outcome in process([video for video in wave if video.video_id not in succeeded]):
            if isinstance(outcome, Failure):
                failures.append(outcome)
            else:
                succeeded.add(outcome)
        for video in wave:
            if video.video_id in succeeded:
                stream.accept(video)
                accepted(video)
    return failures
