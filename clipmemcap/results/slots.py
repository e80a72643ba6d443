"""Slot accuracy, the long-range benchmark's metric: for each event a reference caption names
("a red circle, then a blue square."), does the prediction name the same colour and shape at
the same position? A swapped order scores 0."""

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
