"""Seeded subset selection with replacement of failed candidates.

Candidates are shuffled once with a seed; they are tried in that order, and each one that is
processed successfully fills the first split of its stream that still has room. A candidate that
fails is replaced by the next in order, so the requested counts are counts of *usable* videos.
The result depends only on the seed and on which candidates fail, never on timing.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from clipmemcap.activitynet import Video
from clipmemcap.config import SubsetConfig


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


def plan_streams(train: dict[str, Video], test: dict[str, Video], cfg: SubsetConfig) -> list[Stream]:
    """train + val (disjoint, both from train.json) and test (from val_1.json)."""
    val_videos = math.ceil(cfg.val_fraction * cfg.train_videos)
    return [
        Stream(seeded_order(train, f"{cfg.seed}:train.json"), {"train": cfg.train_videos, "val": val_videos}),
        Stream(seeded_order(test, f"{cfg.seed}:val_1.json"), {"test": cfg.test_videos}),
    ]
