"""Goodput: how much of a run's wall time trained, over every restart.

  ledger = Goodput(workdir, primary=True)   # reads WORKDIR/goodput.json
  ledger.resumed(step)                       # after a restore: steps redone
  with ledger.timed("checkpoint"): ...
  ledger.add("train", seconds); ledger.at(step); ledger.save()

The wall time of each attempt (one `iiet train` process) falls into:

  startup     process start to the first step: imports, data, build, restore
  compile     the first step of each phase (it compiles the step)
  train       every other step: the productive time
  checkpoint  saving (and waiting for async saves)
  evaluation  validation passes
  lost        steps trained by an earlier attempt after its last checkpoint,
              which this attempt trains again (moved out of that attempt's
              `train` when this one restores an earlier step)
  other       the rest of the wall time (switching phases, the summary)

goodput = train / wall time. WORKDIR/goodput.json holds the totals of
the earlier attempts and the last step each reached; it is rewritten at every
log step and save, so a killed attempt leaves its tally up to its last log.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any, Iterator

from etils import epath

import iiet_jax
from iiet_jax import storage

CATEGORIES = ("startup", "compile", "train", "checkpoint", "evaluation",
              "lost", "other")
FILE = "goodput.json"


def _ratio(seconds: dict[str, float]) -> float | None:
  total = sum(seconds.values())
  return seconds["train"] / total if total else None


_first = [True]


def _started() -> float:
  """When this attempt started: the process's start (its import of
  iiet_jax) for its first run, the call for any later one (in-process runs,
  as in tests and notebooks)."""
  if _first[0]:
    _first[0] = False
    return iiet_jax.STARTED
  return time.time()


class Goodput:
  """One attempt's tally and the earlier attempts' (module doc)."""

  def __init__(self, workdir: epath.Path, primary: bool):
    self.path, self.primary = epath.Path(workdir) / FILE, primary
    self.run = dict.fromkeys(CATEGORIES, 0.0)
    self.earlier = dict.fromkeys(CATEGORIES, 0.0)
    self.attempts, self.step, self.steps_trained = 0, 0, 0
    self._last_step = None      # of the attempt before, from its ledger
    self._step_seconds = 0.0    # its mean productive step
    if self.path.exists():
      try:
        saved = json.loads(self.path.read_text())
      except json.JSONDecodeError:   # cut short by a kill: start afresh
        saved = None
      if saved:
        self.earlier.update(saved["total"])
        self.attempts = saved["attempts"]
        self._last_step = saved["last_step"]
        self._step_seconds = saved["step_seconds"]
    self.start = _started()
    self._startup_done = False

  def training_starts(self) -> None:
    """The first step is about to run: start-up ends here."""
    if not self._startup_done:
      self._startup_done = True
      self.run["startup"] = time.time() - self.start

  def resumed(self, step: int) -> None:
    """The run restored `step`: an earlier attempt's steps past it are
    trained again, so their time is lost."""
    self.step = step
    if self._last_step is not None and self._last_step > step:
      lost = (self._last_step - step) * self._step_seconds
      lost = min(lost, self.earlier["train"])
      self.earlier["train"] -= lost
      self.earlier["lost"] += lost

  def add(self, category: str, seconds: float) -> None:
    self.run[category] += seconds

  @contextlib.contextmanager
  def timed(self, category: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
      yield
    finally:
      self.add(category, time.perf_counter() - start)

  def at(self, step: int, trained: bool = True) -> None:
    """One step done (`trained`: counted as a productive step)."""
    self.step = step
    self.steps_trained += trained

  def _run(self) -> dict[str, float]:
    run = dict(self.run)
    run["other"] = max(0.0, time.time() - self.start - sum(run.values()))
    return run

  def total(self) -> dict[str, float]:
    run = self._run()
    return {k: self.earlier[k] + run[k] for k in CATEGORIES}

  def summary(self) -> dict[str, Any]:
    run, total = self._run(), self.total()
    return {"goodput": _ratio(total), "run_goodput": _ratio(run),
            "attempts": self.attempts + 1,
            "seconds": {k: round(v, 3) for k, v in total.items()},
            "run_seconds": {k: round(v, 3) for k, v in run.items()}}

  def save(self) -> None:
    if not self.primary:
      return
    steps = self.steps_trained
    data = {"attempts": self.attempts + 1, "last_step": self.step,
            "step_seconds": self.run["train"] / steps if steps else
            self._step_seconds, "total": self.total()}
    storage.write_whole(self.path, json.dumps(data, indent=1))
