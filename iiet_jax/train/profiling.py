"""A `jax.profiler` trace of chosen training steps: `config.profile_steps`.

`--config.profile_steps=(a, b)` traces steps a..b-1 (numbered as the log
numbers them, from 1) into the run's TensorBoard folder,
WORKDIR/tensorboard/plugins/profile/<time>/<host>.xplane.pb, where
TensorBoard's profile tab (the tensorboard-plugin-profile / xprof package)
reads it. The trace starts just before step a's train_step call and stops
once step b-1's outputs are ready, so it holds whole steps and no
validation; a run resumed inside the window traces what is left of it.
Every process writes its own host's file.
"""

from __future__ import annotations

import jax

from iiet_jax.errors import UserError


class ProfileError(UserError, ValueError):
  """A profile_steps value that names no steps to trace."""

  kind = "Config"


def window(config) -> tuple[int, int] | None:
  """(a, b) from config.profile_steps, None when empty; checked."""
  value = config.get("profile_steps", ())
  sequence = isinstance(value, (tuple, list))
  if value is None or (sequence and not value):
    return None
  total = config.total_steps
  if (not sequence or len(value) != 2
      or not all(isinstance(v, int) and not isinstance(v, bool)
                 for v in value)):
    raise ProfileError(f"profile_steps={value!r}: give two step numbers "
                       f"(a, b) to trace steps a..b-1, or () for no trace.")
  a, b = value
  if not 0 < a < b:
    raise ProfileError(f"profile_steps={tuple(value)!r}: needs 0 < a < b "
                       f"(the trace holds steps a..b-1).")
  if a > total:
    raise ProfileError(f"profile_steps={tuple(value)!r} starts after the "
                       f"run's last step (total_steps={total}).")
  return a, b


class StepTrace:
  """Wraps each train_step call; traces the calls inside the window."""

  def __init__(self, config, log_dir):
    self.window = window(config)  # a ProfileError before anything runs
    self.last = 0  # the step after which the trace stops
    if self.window:
      self.last = min(self.window[1] - 1, config.total_steps)
    self.log_dir = str(log_dir)
    self.active = False

  def call(self, step: int, fn, *args):
    """fn(*args) as training step `step`."""
    if (self.window and not self.active
        and self.window[0] <= step <= self.last):
      jax.profiler.start_trace(self.log_dir)
      self.active = True
    try:
      out = fn(*args)
      if self.active and step >= self.last:
        jax.block_until_ready(out)
        self.close()
    except BaseException:
      self.close()
      raise
    return out

  def close(self) -> None:
    if self.active:
      self.active = False
      jax.profiler.stop_trace()
