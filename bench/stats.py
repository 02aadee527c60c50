"""Seed statistics of the experiments: paired differences, their 95%
confidence interval (Student's t over seeds) and the verdict it gives."""

from __future__ import annotations

import math
import statistics


def interval(values, level: float = 0.95) -> dict:
  """Mean of `values` with its two-sided `level` t interval; n = 1 has no
  interval (lo = hi = None)."""
  from scipy import stats
  values = [float(v) for v in values]
  n = len(values)
  mean = statistics.fmean(values)
  if n < 2:
    return {"n": n, "mean": mean, "sd": None, "lo": None, "hi": None}
  sd = statistics.stdev(values)
  half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
  return {"n": n, "mean": mean, "sd": sd, "lo": mean - half,
          "hi": mean + half}


def detectable(sd: float | None, n: int, level: float = 0.95) -> float | None:
  """The smallest true mean difference a paired design of n seeds with this
  spread would exclude zero for: the interval's half-width."""
  from scipy import stats
  if sd is None or n < 2:
    return None
  return stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
