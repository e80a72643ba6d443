"""Slot accuracy, the long-range benchmark's metric: for each event a reference caption names
("a red circle, then a blue square."), does the prediction name the same colour and shape at
the same position? A swapped order scores 0. Set accuracy forgives the order: it splits a
run's errors into identity errors (an event named with a wrong colour or shape, or not at all:
set score < 1) and order swaps (every event named, in a wrong order: set score 1, slot score < 1)."""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from clipmemcap.core.config import BenchmarkConfig


def slots(caption: str, cfg: BenchmarkConfig) -> list[tuple[str, str]]:
    """The (colour, shape) pairs a caption names, in order."""
    pattern = rf"\b({'|'.join(cfg.colours)})\s+({'|'.join(cfg.shapes)})\b"
    return re.findall(pattern, caption.lower())


def clip_scores(pairs: Iterable[tuple[str, str]], cfg: BenchmarkConfig) -> np.ndarray:
    """For each (prediction, reference) pair, the fraction of the reference's slots that the
    prediction names with the right colour and shape at the right position."""
    scores = []
    for prediction, reference in pairs:
        want, got = slots(reference, cfg), slots(prediction, cfg)
        scores.append(sum(i < len(got) and got[i] == slot for i, slot in enumerate(want)) / len(want))
    return np.array(scores, dtype=np.float64)


def slot_accuracy(pairs: Iterable[tuple[str, str]], cfg: BenchmarkConfig) -> float:
    """The mean of :func:`clip_scores`."""
    scores = clip_scores(pairs, cfg)
    return float(scores.mean()) if len(scores) else float("nan")


def set_scores(pairs: Iterable[tuple[str, str]], cfg: BenchmarkConfig) -> np.ndarray:
    """Order-free slot accuracy: for each pair, the fraction of the reference's slots that the
    prediction names anywhere (each named slot matched once)."""
    scores = []
    for prediction, reference in pairs:
        got = slots(prediction, cfg)
        found = 0
        for slot in slots(reference, cfg):
            if slot in got:
                got.remove(slot)
                found += 1
        scores.append(found / len(slots(reference, cfg)))
    return np.array(scores, dtype=np.float64)


def event_hits(pairs: Iterable[tuple[str, str]], cfg: BenchmarkConfig) -> list[list[bool]]:
    """For each pair, whether the prediction names each of the reference's slots (events) right,
    at its position."""
    hits = []
    for prediction, reference in pairs:
        want, got = slots(reference, cfg), slots(prediction, cfg)
        hits.append([i < len(got) and got[i] == slot for i, slot in enumerate(want)])
    return hits
