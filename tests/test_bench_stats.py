"""bench/stats.py: the seed statistics behind every experiment's verdicts."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import stats  # noqa: E402


def test_interval_is_the_students_t_interval():
  values = [0.1, 0.3, -0.2, 0.4, 0.0]
  ci = stats.interval(values)
  mean, sd = np.mean(values), np.std(values, ddof=1)
  half = 2.7764451 * sd / np.sqrt(5)      # t_{0.975, 4}, from tables
  assert ci["n"] == 5
  np.testing.assert_allclose([ci["mean"], ci["sd"], ci["lo"], ci["hi"]],
                             [mean, sd, mean - half, mean + half], rtol=1e-6)
  np.testing.assert_allclose(stats.detectable(sd, 5), half, rtol=1e-6)
  one = stats.interval([0.5])
  assert one["lo"] is None and one["mean"] == 0.5


@pytest.mark.parametrize("lo,hi,effect,word", [
    (0.5, 3.0, 2.65, "reproduced"),
    (0.5, 1.0, 2.65, "reproduced in direction"),
    (-3.0, -0.5, 2.65, "refuted (the other direction)"),
    (-0.5, 1.0, 2.65, "refuted (the interval excludes"),
    (-1.0, 3.0, 2.65, "inconclusive (detectable: ±2"),
    (None, None, 2.65, "inconclusive (one seed")])
def test_verdicts_from_the_paired_interval(lo, hi, effect, word):
  assert stats.verdict({"lo": lo, "hi": hi}, effect).startswith(word)
