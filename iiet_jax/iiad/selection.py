"""Per-layer iteration counts from influence (SPEC.md section 5, step 2).

Threshold: layer t keeps r_t = the number of leading iterations whose
influence is >= tau; all iterations of a layer apply the same map, so only a
prefix can be kept. Budget: keep at least a fraction of all iterations, by
the same prefix rule with the largest tau that keeps enough.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from iiet_jax.errors import UserError


class SelectionError(UserError, ValueError):
  """A threshold or budget that cannot select iterations."""

  kind = "Influence"


def check(tau: float | None, budget: float | None) -> None:
  """Fails on a threshold or budget no influence could satisfy, so a run
  is refused before anything is measured."""
  if budget:
    if not 0.0 < budget <= 1.0:
      raise SelectionError(f"budget={budget} must lie in (0, 1]: the share "
                           f"of the teacher's iterations to keep.")
  elif tau is not None:
    check_tau(tau)


def check_tau(tau: float) -> None:
  if not 0.0 <= tau < 1.0:
    raise SelectionError(
        f"tau={tau} is outside [0, 1): influence is a relative state change, "
        f"so tau >= 1 would drop iterations that still move the state by as "
        f"much as the state itself; tau < 0 is meaningless.")


def by_threshold(influence_LR: np.ndarray, tau: float) -> tuple[int, ...]:
  check_tau(tau)
  counts = []
  for row in np.asarray(influence_LR, np.float64):
    r = 0
    for value in row:
      if np.isnan(value) or value < tau:
        break
      r += 1
    counts.append(r)
  return tuple(counts)


def by_budget(influence_LR: np.ndarray, fraction: float
              ) -> tuple[tuple[int, ...], float]:
  """(r_t, the tau used) keeping at least `fraction` of the iterations."""
  values = np.asarray(influence_LR, np.float64)
  total = int(np.sum(~np.isnan(values)))
  if fraction <= 0.0 or total == 0:
    raise SelectionError(f"budget={fraction} of {total} iterations keeps "
                         f"nothing; give a share in (0, 1].")
  if fraction > 1.0:
    raise SelectionError(f"budget={fraction} must lie in (0, 1]: the share "
                         f"of the teacher's {total} iterations to keep.")
  want = math.ceil(fraction * total - 1e-9)
  candidates = sorted({float(v) for v in values[~np.isnan(values)]},
                      reverse=True)
  for tau in candidates:
    if tau >= 1.0:
      continue
    counts = by_threshold(values, tau)
    if sum(counts) >= want:
      return counts, tau
  return by_threshold(values, 0.0), 0.0


def block_evaluations(model_cfg, iterations=None) -> int:
  """Block evaluations per token of `model_cfg` with `iterations` (default
  its own), as its architecture's record counts them (models/registry.py)."""
  if iterations is not None:
    model_cfg = dataclasses.replace(model_cfg, iterations=tuple(iterations))
  return sum(model_cfg.block_evaluations_per_layer())
