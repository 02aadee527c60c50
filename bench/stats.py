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


def verdict(ci: dict, effect: float | None) -> str:
  """A claimed difference `effect` (> 0, in the sign of `ci`; None: a
  direction only) judged by the paired interval: reproduced when the
  interval lies above zero (and holds the paper's effect), refuted when it
  excludes the paper's effect or lies below zero, else inconclusive with
  the effect this design can detect."""
  if ci is None or ci.get("lo") is None:
    return "inconclusive (one seed: no interval)"
  lo, hi = ci["lo"], ci["hi"]
  if hi < 0:
    return "refuted (the other direction)"
  if lo > 0:
    return ("reproduced" if effect is None or hi >= effect else
            f"reproduced in direction, below the paper's {effect:+g}")
  if effect is not None and hi < effect:
    return f"refuted (the interval excludes the paper's {effect:+g})"
  half = (hi - lo) / 2
  return f"inconclusive (detectable: ±{half:.2g})"
