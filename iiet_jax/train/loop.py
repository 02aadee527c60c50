"""The one training loop every stage runs in.

  summary = train(config, workdir, plan)

`plan` is a list of `Phase`s (data, plus hooks: how to build the phase's
Training, how to enter it from the phase before, what to report at the end);
the stages (`iiet_jax.stages`) make plans, the loop knows none of them. It
resumes from the newest readable checkpoint in `workdir` (or starts fresh,
optionally warm-started from `config.init_from`), then steps through the
phases, entering each from the one before. Around the pure
`train_step` it feeds batches, logs metrics (screen, metrics.jsonl,
TensorBoard), evaluates every `eval_every` steps, and checkpoints every
`checkpoint.every` steps, at each phase end and on SIGTERM or Ctrl-C, after
which it returns a summary that says what stopped it (`stopped_by`; the
command line exits 75 or 130). With several processes, a SIGTERM to any of
them stops all of them after the same step, with no per-step collective
(`parallel/preemption.py`). A non-finite loss, gradient norm or weight
stops the run before it saves (train/divergence.py). The corpus and
tokenizer are opened before the workdir is created, and the workdir's lock
(iiet_jax/lock.py) is held throughout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Callable

from etils import epath
import jax
import numpy as np

from iiet_jax import checkpoint as ckpt_lib
from iiet_jax import lock
from iiet_jax import storage
from iiet_jax.data import tokenizer as tok_lib
from iiet_jax.data.loader import make_loaders
from iiet_jax.parallel import multihost
from iiet_jax.parallel.preemption import Preemption
from iiet_jax.train import compile_cache
from iiet_jax.train import divergence
from iiet_jax.train import goodput as goodput_lib
from iiet_jax.train import profiling
from iiet_jax.train import loss as loss_lib
from iiet_jax.train import step as step_lib
from iiet_jax.train import warm_start
from iiet_jax.train import writers as writers_lib
from iiet_jax.train.build import Training, build_training
from iiet_jax.train.writers import MetricWriters


@dataclasses.dataclass(frozen=True)
class Phase:
  # Saved with each checkpoint as the model description's "phase": the
  # architecture a pre-training phase trains ("transformer", "iiet", ...),
  # or "distill"; a resume continues in the phase it names.
  name: str
  start: int     # first step (state.step before it)
  end: int       # state.step after its last step
  config: Any    # the run config, with this phase's model
  # (config, batch_keys, loaders, workdir) -> Training; None: build_training.
  build: Callable | None = None
  # (state of the phase before, this phase's Training, the one before's,
  # loaders) -> (state, what changed): how a later phase takes over.
  enter: Callable | None = None
  # (fresh state, this phase's Training) -> (state, what changed): how the
  # first phase's parameters start when the run starts fresh (not resumed).
  init: Callable | None = None
  # (state, Training, validation batches, feed) -> final metrics (last phase).
  report: Callable | None = None


def train(config, workdir: epath.PathLike, plan: list[Phase]
          ) -> dict[str, Any]:
  """Runs (or resumes) `plan` in `workdir`; returns a summary."""
  workdir = epath.Path(workdir)
  if "://" not in str(workdir):  # Orbax needs absolute local paths.
    workdir = epath.Path(os.path.abspath(workdir))
  compile_cache.enable(config, workdir)   # before the first compile
  # Every data and tokenizer check runs here, before the workdir exists.
  loaders = make_loaders(config)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    command = "distill" if config.get("stage") == "distill" else "train"
    with lock.held(workdir, command, jax.process_index() == 0,
                   multihost.primary_says) as held:
      return _train(config, workdir, plan, loaders, held)
  finally:
    with contextlib.suppress(Exception):
      loaders.close()


def _train(config, workdir, plan, loaders, held) -> dict[str, Any]:
  run = None
  try:
    run = _Run(config, workdir, plan, loaders, held)
    state, phase_name = run.start()
    complete = run.complete_summary(state)
    if complete is not None:
      return complete
    if jax.process_index() == 0:
      print(writers_lib.header(config, plan, run.training, run.loaders),
            flush=True)
    stopper = Preemption()
    step = int(state.step)
    try:
      for index, phase in enumerate(plan):
        if step >= phase.end and index < len(plan) - 1:
          continue
        if phase.name != phase_name:
          state = run.enter(index, state, step)
          phase_name = phase.name
        state, step, stopped = run.phase(phase, state, step, stopper)
        # A stop at the last step is a finished run, not a resumable one.
        if stopped and step < plan[-1].end:
          return run.finish(step, stopped_by=stopper.reason)
      return run.finish(step, extra=run.report(state, step))
    finally:
      try:
        run.trace.close()
      finally:
        stopper.close()
  except BaseException:
    # A failure before `finish` (a warm start, divergence, a second Ctrl-C)
    # still closes the manager: its background threads must not outlive
    # the interpreter ("cannot schedule new futures" at exit).
    if run is not None:
      run.close_quietly()
    raise


class _Run:
  """The parts of one `train` call (loaders, writers, checkpoints, each
  phase's Training) and the steps it takes over its plan."""

  def __init__(self, config, workdir: epath.Path, plan: list[Phase],
               loaders, held):
    self.config, self.workdir, self.plan = config, workdir, plan
    self.held = held   # the workdir's lock (lock.held)
    self.trace = profiling.StepTrace(config, workdir / "tensorboard")
    self.loaders = loaders
    self.watch = divergence.Divergence(
        config.get("nonfinite", "stop"),
        config.get("nonfinite_max_skips", divergence.DEFAULT_MAX_SKIPS))
    if self.loaders.tokenizer is not None and jax.process_index() == 0:
      tok_lib.carry(self.loaders.tokenizer, workdir)  # what readers use
    self.built: dict[str, Training] = {}
    self.writers = MetricWriters(str(workdir), config.total_steps,
                                 enabled=jax.process_index() == 0,
                                 log_every=config.log_every)
    self.checkpoints = ckpt_lib.Checkpoints(
        workdir / "checkpoints", keep=config.checkpoint.keep,
        keep_best=config.checkpoint.keep_best,
        async_save=config.checkpoint.async_save)
    self.config_json = json.loads(config.to_json_best_effort())
    self.val, self.metrics, self.feed = None, {}, None
    self.goodput = goodput_lib.Goodput(workdir, jax.process_index() == 0)

  @property
  def timer(self) -> dict[str, float]:
    """Tokens and seconds of the steps this attempt trained (not compiled)."""
    return {"tokens": self.goodput.steps_trained * self.config.batch_size
                      * self.config.seq_len,
            "seconds": self.goodput.run["train"]}

  def training(self, phase: Phase) -> Training:
    if phase.name not in self.built:
      if phase.build is None:
        self.built[phase.name] = build_training(
            phase.config, batch_keys=self.loaders.batch_keys)
      else:
        self.built[phase.name] = phase.build(
            phase.config, self.loaders.batch_keys, self.loaders,
            self.workdir)
    return self.built[phase.name]

  def description(self, phase: Phase) -> dict[str, Any]:
    return ckpt_lib.describe(self.training(phase).model.config, phase.name)

  def _restore_target(self, step: int, saved: dict[str, Any]):
    """The state to restore a checkpoint of `saved`'s phase onto."""
    names = [p.name for p in self.plan]
    if saved.get("phase") not in names:
      raise ckpt_lib.CheckpointError(
          f"{self.workdir} holds a checkpoint (step {step}) of a "
          f"{saved.get('phase')!r} phase; this config trains {names}. Use a "
          f"new --workdir for this config.")
    phase = self.plan[names.index(saved["phase"])]
    # nonfinite=skip keeps the optimizer state in another layout.
    policy = self.checkpoints.saved_config(step).get("nonfinite", "stop")
    if policy != self.config.get("nonfinite", "stop"):
      raise ckpt_lib.CheckpointError(
          f"{self.workdir} was saved with nonfinite={policy}, whose "
          f"optimizer state has another layout than this run's nonfinite="
          f"{self.config.get('nonfinite', 'stop')}. Resume with "
          f"--config.nonfinite={policy}, or start a new --workdir.")
    ckpt_lib.check_compatible(saved, self.description(phase),
                              str(self.workdir))
    return self.training(phase).sharded_state()

  def start(self):
    """(state, its phase's name): the newest readable checkpoint, or a
    fresh state (first phase's init hook, then the warm start)."""
    first = self.plan[0]
    restored = self.checkpoints.restore(
        self.training(first).sharded_state(),
        self.loaders.train.grain_iterator, self._restore_target)
    if restored is not None:
      for bad in restored.skipped:
        self.writers.event(restored.step, f"checkpoint step {bad} "
                           f"unreadable; fell back to step {restored.step}")
      self.writers.event(restored.step, f"resumed from step {restored.step} "
                         f"({restored.model['phase']}) in "
                         f"{self.checkpoints.directory}")
      self.goodput.resumed(restored.step)
      return restored.state, restored.model["phase"]
    state = self.training(first).init_state(self.config.seed)
    if first.init is not None:
      state, change = first.init(state, self.training(first))
      self.writers.event(0, f"initialised: {change}")
    if self.config.init_from:
      state = warm_start.load_params(state, self.training(first), self.config)
      self.writers.event(0, f"warm start: parameters from "
                         f"{self.config.init_from}")
    return state, first.name

  def complete_summary(self, state) -> dict[str, Any] | None:
    """The saved summary of a run already at total_steps (closing all)."""
    done = self.workdir / "summary.json"
    if int(state.step) < self.config.total_steps or not done.exists():
      return None
    summary = dict(json.loads(done.read_text()), preempted=False,
                   stopped_by=None)   # complete, however it last stopped
    self.writers.event(int(state.step), f"the run in {self.workdir} is "
                       f"complete; its summary follows (raise "
                       f"--config.total_steps to go on)")
    self.checkpoints.close()
    self.writers.close()
    return summary

  def enter(self, index: int, state, step: int):
    """`state` handed from phase `index - 1` to phase `index`."""
    phase = self.plan[index]
    if phase.enter is None or index == 0:
      raise ValueError(f"the plan's phase {phase.name!r} follows another "
                       f"but has no `enter` hook")
    state, change = phase.enter(state, self.training(phase),
                                self.training(self.plan[index - 1]),
                                self.loaders)
    self.writers.event(step, f"switched to {phase.name} at step {step}: "
                       f"{change}")
    return state

  def phase(self, phase: Phase, state, step: int, stopper: Preemption):
    """Trains `phase` from `step` to its end, or until a SIGTERM or Ctrl-C;
    returns (state, step, stopped)."""
    config, training = self.config, self.training(phase)
    shardings = step_lib.batch_shardings(self.loaders.batch_keys,
                                         training.mesh, training.rules)
    self.feed = lambda b: multihost.global_batch(b, shardings,
                                                 config.batch_size)
    first = True   # the first step of a phase compiles: not timed
    self.goodput.training_starts()
    while step < phase.end:
      t0 = time.perf_counter()
      state, self.metrics = self.trace.call(
          step + 1, training.train_step, state,
          self.feed(next(self.loaders.train)))
      step += 1
      self.watch.note(step, self.metrics)
      log = step % config.log_every == 0 or step == config.total_steps
      if log or first:
        jax.block_until_ready(self.metrics)
      seconds = time.perf_counter() - t0
      self.goodput.add("compile" if first else "train", seconds)
      self.goodput.at(step, trained=not first)
      first = False
      if log:
        row = writers_lib.train_metrics(self.metrics, self.timer, training,
                                        config)
        row.update(self._source_tokens())
        row["goodput"] = self.goodput.summary()["goodput"]
        self.writers.write(step, row)
        self.writers.progress(step, row)
        self._check_finite(step)
        self.goodput.save()
      with self.goodput.timed("evaluation"):
        evaluated = self._evaluate(training, state, step)
      stop = stopper.reached()
      if step % config.checkpoint.every == 0 or step == phase.end or stop:
        self._check_finite(step, state)
        self._check_lock()
        with self.goodput.timed("checkpoint"):
          self.checkpoints.save(step, state,
                                self.loaders.train.grain_iterator,
                                self.config_json, self.description(phase),
                                evaluated)
        self.goodput.save()
      if stop:
        with self.goodput.timed("checkpoint"):
          self.checkpoints.wait()
        self.writers.event(step, f"{stopper.reason}: checkpoint of step "
                           f"{step} written; stopping")
        return state, step, True
    return state, step, False

  def _source_tokens(self) -> dict[str, int]:
    """{"tokens/<source>": tokens so far} of a mixture, over all processes."""
    counts = self.loaders.train.source_tokens()
    if not counts:
      return {}
    total = multihost.sum_over_processes(np.asarray(list(counts.values())))
    return {f"tokens/{n}": int(c) for n, c in zip(counts, total)}

  def _check_finite(self, step: int, state=None) -> None:
    """Raises DivergedError once a loss, gradient norm or (with `state`,
    before a save) weight is not finite; nothing after it is saved."""
    found = self.watch.first_bad(step, state)
    if found is None:
      return
    bad, source = found
    self.checkpoints.wait()
    saved = self.checkpoints.steps()
    kept = (f"the newest checkpoint, step {saved[-1]}, holds finite weights "
            f"and a rerun resumes from it" if saved else
            "no checkpoint was written, so a rerun starts afresh")
    if source == "weights":
      what = "weights"
    elif self.config.get("nonfinite") == "skip":
      what = (f"updates ({self.config.nonfinite_max_skips} dropped in a "
              f"row, then one went through)")
    else:
      what = "loss or gradient norm"
    message = (f"training diverged: the {what} stopped being finite at step "
               f"{bad}, so the run stopped at step {step} without saving; "
               f"{kept}. To go on, {divergence.advice(self.config)}.")
    self.writers.event(step, message, show=False)   # the error line says it
    raise divergence.DivergedError(message)

  def _check_lock(self) -> None:
    """Before a save: this run still holds its workdir (every process
    learns process 0's answer, so all stop together)."""
    if not multihost.primary_says(not self.held.lost):
      raise lock.LockError(
          f"{self.workdir}: this run lost its lock (another process took it "
          f"over while this one was not renewing it), so it stops without "
          f"saving; the other process owns the workdir now.")

  def _evaluate(self, training: Training, state, step: int):
    """Validation every eval_every steps and at the last: {metric: loss}
    for the checkpoint that follows, else None."""
    config = self.config
    if step % config.eval_every and step != config.total_steps:
      return None
    self._check_finite(step)
    self.val = loss_lib.evaluate(training.eval_step, state.params,
                                 self.loaders.validation, self.feed)
    self.writers.write(step, self.val, prefix="validation")
    self.writers.event(step, f"validation loss {self.val['loss']:.4f}, "
                       f"perplexity {self.val['perplexity']:.1f}")
    return {ckpt_lib.VALIDATION_METRIC: self.val["loss"]}

  def report(self, state, step: int) -> dict[str, Any]:
    """The last phase's final metrics (its `report` hook), logged."""
    report = self.plan[-1].report
    if report is None or self.feed is None:
      return {}
    extra = report(state, self.training(self.plan[-1]),
                   self.loaders.validation, self.feed)
    self.writers.write(step, {k: v for k, v in extra.items()
                              if isinstance(v, float)}, prefix="validation")
    self.writers.event(step, "final: " + ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
        for k, v in extra.items()))
    return extra

  def finish(self, step: int, stopped_by: str | None = None,
             extra: dict | None = None) -> dict[str, Any]:
    """Waits for the last checkpoint, closes, writes summary.json."""
    with self.goodput.timed("checkpoint"):
      self.checkpoints.wait()
      self.checkpoints.close()
    config, metrics, val, timer = (self.config, self.metrics, self.val,
                                   self.timer)
    summary = {
        "steps": step, "total_steps": config.total_steps,
        # Cut short (SIGTERM or Ctrl-C, saved): resumable, not a result.
        "preempted": stopped_by is not None, "stopped_by": stopped_by,
        "train_loss": float(metrics["loss"]) if "loss" in metrics else None,
        "validation_loss": val["loss"] if val else None,
        "validation_perplexity": val["perplexity"] if val else None,
        "tokens_per_s": (timer["tokens"] / timer["seconds"]
                         if timer["seconds"] else None),
        "checkpoints": str(self.checkpoints.directory),
        "metrics": str(self.workdir / "metrics.jsonl"),
        "tensorboard": str(self.workdir / "tensorboard"),
        # Productive share of the wall time, this attempt and all (goodput.py).
        "goodput": self.goodput.summary(),
        **(extra or {}),
    }
    self.goodput.save()
    self.writers.close()   # metrics uploaded before the run says it is done
    if jax.process_index() == 0:
      storage.write_whole(self.workdir / "summary.json",
                          json.dumps(summary, indent=2))
    return summary

  def close_quietly(self) -> None:
    with contextlib.suppress(Exception):
      self.checkpoints.close()
    with contextlib.suppress(Exception):
      self.writers.close()
