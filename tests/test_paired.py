"""Paired bootstrap intervals: right width, paired by clip, seeds as a level, reproducible."""

import numpy as np
import pytest

from clipmemcap.results.paired import difference_ci, mean_ci, ratio_ci, shift_ci


def test_identical_and_opposite_runs_give_degenerate_intervals():
    # seeds that agree: nothing but the clips varies, and the clips are paired
    scores = np.repeat(np.random.default_rng(0).integers(0, 2, (1, 200)).astype(float), 3, 0)
    assert difference_ci(scores, scores) == [0.0, 0.0]
    assert difference_ci(np.ones((3, 50)), np.zeros((3, 50))) == [1.0, 1.0]


def test_the_interval_has_the_width_of_the_normal_approximation_and_covers_the_truth():
    """One seed, 2,000 clips, accuracies 0.6 vs 0.5 scored independently: the 95 % interval of
    the difference is about 2 x 1.96 x sqrt((0.24 + 0.25) / n) wide and holds 0.1."""
    rng = np.random.default_rng(1)
    n = 2000
    a, b = (rng.random((1, n)) < 0.6).astype(float), (rng.random((1, n)) < 0.5).astype(float)
    low, high = difference_ci(a, b)
    expected = 2 * 1.96 * np.sqrt((0.24 + 0.25) / n)
    assert high - low == pytest.approx(expected, rel=0.15)
    assert low < 0.1 < high and low > 0  # a real difference of 10 points is found at this size


def test_pairing_removes_the_clips_difficulty():
    """Two runs that differ by one clip in 100, on clips of very uneven difficulty: paired, the
    interval is tight around 0.01; an unpaired bootstrap would be ten times wider."""
    rng = np.random.default_rng(2)
    hard = (rng.random((1, 100)) < 0.5).astype(float)
    better = hard.copy()
    better[0, np.flatnonzero(hard[0] == 0)[0]] = 1.0
    low, high = difference_ci(better, hard)
    assert 0 <= low <= 0.01 <= high <= 0.03


def test_seeds_are_a_level_of_the_bootstrap():
    """Seed 0 gets every clip right and seed 1 none: resampling clips alone would call the mean
    exactly 0.5; resampling seeds too shows that two seeds cannot pin it down."""
    table = np.stack([np.ones(300), np.zeros(300)])
    low, high = mean_ci(table)
    assert low == 0.0 and high == 1.0


def test_intervals_are_reproducible_and_the_ratio_follows_its_parts():
    rng = np.random.default_rng(3)
    long, control = (rng.random((3, 400)) < 0.45).astype(float), (rng.random((3, 400)) < 0.9).astype(float)
    assert difference_ci(long, control) == difference_ci(long, control)
    low, high = ratio_ci(long, control)
    assert low < long.mean() / control.mean() < high and high - low < 0.15
    with pytest.raises(ValueError, match="same clips"):
        difference_ci(long, control[:, :10])


def test_a_shift_compares_one_runs_scores_on_two_clip_sets_of_any_size():
    """One run at two clip lengths: 0.8 on 300 clips, 0.5 on 100 other clips (and 5 seeds)."""
    rng = np.random.default_rng(4)
    short, long = (rng.random((5, 300)) < 0.8).astype(float), (rng.random((5, 100)) < 0.5).astype(float)
    low, high = shift_ci(long, short)
    assert low < long.mean() - short.mean() < high < 0 and high - low < 0.25
    assert shift_ci(long, short) == [low, high]
    with pytest.raises(ValueError, match="same seeds: 5 vs 3"):
        shift_ci(long, short[:3])
