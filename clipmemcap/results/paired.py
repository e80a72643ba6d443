"""Bootstrap confidence intervals for scores of runs on the same test clips.

A run's scores are a table ``[seeds, clips]``: one row per training seed, every run scored on the
same clips in the same order. One bootstrap draw resamples the clips and, as a second level, the
seeds (independently trained models, so their spread is part of the uncertainty). A comparison of
two runs is *paired*: both get the same clip resample, so the clips' difficulty cancels. The
interval is the 2.5th and 97.5th percentile of the drawn statistic. Every interval draws from its
own generator with a fixed seed, so the same scores give the same interval, byte for byte.
"""

from __future__ import annotations

import numpy as np

DRAWS = 4000
SEED = 0


def _mean_draws(table: np.ndarray, clips: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[seeds, clips] scores, clip resamples [draws, n] -> the drawn means [draws]."""
    per_seed = table[:, clips].mean(-1)  # [seeds, draws]
    seeds = rng.integers(0, table.shape[0], (clips.shape[0], table.shape[0]))  # [draws, seeds]
    return np.take_along_axis(per_seed.T, seeds, 1).mean(1)


def _interval(draws: np.ndarray) -> list[float]:
    low, high = np.percentile(draws, [2.5, 97.5])
    return [round(float(low), 6), round(float(high), 6)]


def mean_ci(table: np.ndarray, draws: int = DRAWS) -> list[float]:
    """95 % interval of one run's mean score."""
    rng = np.random.default_rng(SEED)
    return _interval(_mean_draws(table, rng.integers(0, table.shape[1], (draws, table.shape[1])), rng))


def difference_ci(a: np.ndarray, b: np.ndarray, draws: int = DRAWS) -> list[float]:
    """95 % interval of mean(a) - mean(b), paired by clip."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired scores need the same clips: {a.shape[1]} vs {b.shape[1]}")
    rng = np.random.default_rng(SEED)
    clips = rng.integers(0, a.shape[1], (draws, a.shape[1]))
    return _interval(_mean_draws(a, clips, rng) - _mean_draws(b, clips, rng))


def _apart_draws(a: np.ndarray, b: np.ndarray, draws: int) -> tuple[np.ndarray, np.ndarray]:
    """One run's scores on two sets of different clips ([seeds, clips_a], [seeds, clips_b]) -> the
    drawn means of each [draws]: the seeds resampled together, each set's clips on their own."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"one run's scores on two clip sets need the same seeds: {a.shape[0]} vs {b.shape[0]}")
    rng = np.random.default_rng(SEED)
    seeds = rng.integers(0, a.shape[0], (draws, a.shape[0]))

    def drawn(table):
        per_seed = table[:, rng.integers(0, table.shape[1], (draws, table.shape[1]))].mean(-1)  # [seeds, draws]
        return np.take_along_axis(per_seed.T, seeds, 1).mean(1)

    return drawn(a), drawn(b)


def ratio_ci(numerator: np.ndarray, denominator: np.ndarray, draws: int = DRAWS) -> list[float]:
    """95 % interval of mean(numerator) / mean(denominator): one run's long and control clips."""
    top, bottom = _apart_draws(numerator, denominator, draws)
    return _interval(top / np.maximum(bottom, 1e-9))


def shift_ci(a: np.ndarray, b: np.ndarray, draws: int = DRAWS) -> list[float]:
    """95 % interval of mean(a) - mean(b): one run's scores at two clip lengths."""
    drawn_a, drawn_b = _apart_draws(a, b, draws)
    return _interval(drawn_a - drawn_b)
