"""A diverged run stops before it saves: non-finite losses and weights.

  watch = Divergence(config.nonfinite, config.nonfinite_max_skips)
  ... after every step:   watch.note(step, metrics)      (no host sync)
  ... where the loop already waits (logging, evaluation) and before every
  save:                   bad = watch.first_bad(state)   (None: all finite)

`note` folds the step's loss and gradient norm into one device scalar, the
first step at which either was not finite (0: none yet). It is one tiny
dispatched op, so the loop gains no per-step host sync; `first_bad` reads it
back at the boundaries, and before a save (`state` given) also reduces every
floating-point leaf of the parameters and optimizer moments, so no
checkpoint ever holds a non-finite weight.

Policies (`config.nonfinite`):
- "stop" (default): the first non-finite loss or gradient norm is divergence.
- "skip": the optimizer drops a non-finite update (optax.apply_if_finite,
  built in train/optimizer.py) and counts it (`skipped_steps` in the metrics);
  only more than `nonfinite_max_skips` in a row is divergence, as
  apply_if_finite then lets the update through.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from iiet_jax.errors import Exit, UserError

POLICIES = ("stop", "skip")
DEFAULT_MAX_SKIPS = 5   # configs/lm.py's nonfinite_max_skips


class DivergedError(UserError):
  """The loss, a gradient or a weight stopped being finite."""

  kind = "Diverged"
  exit_code = Exit.DIVERGED


@functools.partial(jax.jit, static_argnames=("max_skips",))
def _fold(first_bad, step, metrics, max_skips):
  """One dispatched op: `first_bad` updated with this step's metrics. It
  also starts it (first_bad None): a jitted op keeps the metrics' global
  sharding, where an array made on the host would sit on one device."""
  if max_skips is not None:   # nonfinite=skip
    bad = metrics["consecutive_skips"] > max_skips
  else:
    bad = ~jnp.isfinite(metrics["loss"])
    if "grad_norm" in metrics:
      bad = bad | ~jnp.isfinite(metrics["grad_norm"])
  if first_bad is None:
    return jnp.where(bad, step, 0).astype(jnp.int32)
  return jnp.where((first_bad == 0) & bad, step, first_bad)


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class Divergence:
  """Tracks the first non-finite step of a run (see the module doc)."""

  def __init__(self, policy: str = "stop",
               max_skips: int = DEFAULT_MAX_SKIPS):
    self.policy, self.max_skips = policy, max_skips
    self._first = None   # device int32 scalar: first bad step, 0 if none

  def note(self, step: int, metrics) -> None:
    watched = {k: metrics[k] for k in ("loss", "grad_norm",
                                       "consecutive_skips") if k in metrics}
    self._first = _fold(self._first, step, watched,
                        self.max_skips if self.policy == "skip" else None)

  def first_bad(self, step: int, state=None) -> tuple[int, str] | None:
    """(the first non-finite step noted so far, "metrics"), or (`step`,
    "weights") when `state`'s weights are not all finite; None when
    everything is finite."""
    if self._first is not None and int(self._first):
      return int(self._first), "metrics"
    if state is not None and not bool(
        _all_finite((state.params, state.opt_state))):
      return step, "weights"
    return None


def check_config(config, error=UserError) -> None:
  """The policy and its limit (preflight calls this)."""
  policy = config.get("nonfinite", "stop")
  if policy not in POLICIES:
    raise error(f"nonfinite={policy!r}; choose one of {', '.join(POLICIES)} "
                f"(stop: a non-finite loss ends the run; skip: drop such "
                f"updates, up to nonfinite_max_skips in a row).")
  skips = config.get("nonfinite_max_skips", DEFAULT_MAX_SKIPS)
  if policy == "skip" and (not isinstance(skips, int) or skips < 1):
    raise error(f"nonfinite_max_skips={skips!r} must be a whole number >= 1 "
                f"(non-finite updates dropped in a row before the run "
                f"counts as diverged).")


def advice(config) -> str:
  """What to try, with the run's own values."""
  opt = config.optimizer
  tips = [f"a lower --config.optimizer.peak_lr (now {opt.peak_lr:g})",
          f"a longer --config.optimizer.warmup_steps (now "
          f"{opt.warmup_steps})"]
  if config.get("nonfinite", "stop") == "stop":
    tips.append("--config.nonfinite=skip in a new --workdir (its optimizer "
                "state has another layout) to drop such updates")
  return "try " + ", ".join(tips[:-1]) + " or " + tips[-1]
