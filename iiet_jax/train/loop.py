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
`checkpoint.every` steps, at each phase end and on SIGTERM, after which it
returns normally so the process exits 0. With several processes, a SIGTERM
to any of them stops all of them after the same step, with no per-step
collective (`parallel/preemption.py`).
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

from iiet_jax import checkpoint as ckpt_lib
from iiet_jax.data import tokenizer as tok_lib
from iiet_jax.data.loader import make_loaders
from iiet_jax.models import registry
from iiet_jax.parallel import multihost
from iiet_jax.parallel.preemption import Preemption
from iiet_jax.train import flops
from iiet_jax.train import profiling
from iiet_jax.train import loss as loss_lib
from iiet_jax.train import step as step_lib
from iiet_jax.train import warm_start
from iiet_jax.train.build import Training, build_training
from iiet_jax.train.writers import MetricWriters


@dataclasses.dataclass(frozen=True)
class Phase:
  name: str      # saved with its checkpoints; the architecture trained
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
  workdir.mkdir(parents=True, exist_ok=True)
  trace = profiling.StepTrace(config, workdir / "tensorboard")
  loaders = make_loaders(config)
  if loaders.tokenizer is not None and jax.process_index() == 0:
    tok_lib.carry(loaders.tokenizer, workdir)   # what readers of the run use
  built: dict[str, Training] = {}

  def training_for(phase: Phase) -> Training:
    if phase.name not in built:
      if phase.build is None:
        built[phase.name] = build_training(phase.config,
                                           batch_keys=loaders.batch_keys)
      else:
        built[phase.name] = phase.build(phase.config, loaders.batch_keys,
                                        loaders, workdir)
    return built[phase.name]

  def description(phase: Phase) -> dict[str, Any]:
    return ckpt_lib.describe(training_for(phase).model.config, phase.name)

  def check(step: int, saved: dict[str, Any]):
    names = [p.name for p in plan]
    if saved.get("phase") not in names:
      raise ckpt_lib.CheckpointError(
          f"{workdir} holds a checkpoint (step {step}) of a "
          f"{saved.get('phase')!r} phase; this config trains {names}. Use a "
          f"new --workdir for this config.")
    phase = plan[names.index(saved["phase"])]
    ckpt_lib.check_compatible(saved, description(phase), str(workdir))
    return training_for(phase).sharded_state()

  writers = MetricWriters(str(workdir), config.total_steps,
                          enabled=jax.process_index() == 0,
                          log_every=config.log_every)
  checkpoints = ckpt_lib.Checkpoints(
      workdir / "checkpoints", keep=config.checkpoint.keep,
      keep_best=config.checkpoint.keep_best,
      async_save=config.checkpoint.async_save)
  try:
    config_json = json.loads(config.to_json_best_effort())
    restored = checkpoints.restore(training_for(plan[0]).sharded_state(),
                                   loaders.train.grain_iterator, check)
    if restored is not None:
      state, phase_name = restored.state, restored.model["phase"]
      for bad in restored.skipped:
        writers.event(restored.step, f"checkpoint step {bad} unreadable; "
                      f"fell back to step {restored.step}")
      writers.event(restored.step, f"resumed from step {restored.step} "
                    f"({phase_name}) in {checkpoints.directory}")
    else:
      phase_name = plan[0].name
      state = training_for(plan[0]).init_state(config.seed)
      if plan[0].init is not None:
        state, change = plan[0].init(state, training_for(plan[0]))
        writers.event(0, f"initialised: {change}")
      if config.init_from:
        state = warm_start.load_params(state, training_for(plan[0]), config)
        writers.event(0, f"warm start: parameters from {config.init_from}")

    done = workdir / "summary.json"
    if int(state.step) >= config.total_steps and done.exists():
      writers.event(int(state.step), f"the run in {workdir} is complete; its "
                    f"summary follows (raise --config.total_steps to go on)")
      checkpoints.close()
      loaders.close()
      writers.close()
      return json.loads(done.read_text())
    if jax.process_index() == 0:
      print(_header(config, plan, training_for, loaders), flush=True)
    preemption = Preemption()
    step = int(state.step)
    val, metrics, feed = None, {}, None
    timer = {"tokens": 0, "seconds": 0.0}
    try:
      for index, phase in enumerate(plan):
        if step >= phase.end and index < len(plan) - 1:
          continue
        training = training_for(phase)
        if phase.name != phase_name:
          if phase.enter is None or index == 0:
            raise ValueError(f"the plan's phase {phase.name!r} follows "
                             f"{phase_name!r} but has no `enter` hook")
          state, change = phase.enter(state, training,
                                      training_for(plan[index - 1]), loaders)
          phase_name = phase.name
          writers.event(step, f"switched to {phase.name} at step {step}: "
                        f"{change}")
        shardings = step_lib.batch_shardings(loaders.batch_keys, training.mesh,
                                             training.rules)
        feed = lambda b, s=shardings: multihost.global_batch(
            b, s, config.batch_size)
        first = True
        while step < phase.end:
          t0 = time.perf_counter()
          state, metrics = trace.call(step + 1, training.train_step, state,
                                      feed(next(loaders.train)))
          step += 1
          log = step % config.log_every == 0 or step == config.total_steps
          if log or first:
            jax.block_until_ready(metrics)
          if not first:  # the first step of a phase compiles
            timer["seconds"] += time.perf_counter() - t0
            timer["tokens"] += config.batch_size * config.seq_len
          first = False
          if log:
            writers.write(step,
                          _train_metrics(metrics, timer, training, config))
            writers.progress(step, _train_metrics(metrics, timer, training,
                                                  config))
          evaluated = None
          if step % config.eval_every == 0 or step == config.total_steps:
            val = loss_lib.evaluate(training.eval_step, state.params,
                                    loaders.validation, feed)
            writers.write(step, val, prefix="validation")
            writers.event(step, f"validation loss {val['loss']:.4f}, "
                          f"perplexity {val['perplexity']:.1f}")
            evaluated = {ckpt_lib.VALIDATION_METRIC: val["loss"]}
          stop = preemption.reached()
          if (step % config.checkpoint.every == 0 or step == phase.end or stop):
            checkpoints.save(step, state, loaders.train.grain_iterator,
                             config_json, description(phase), evaluated)
          if stop:
            checkpoints.wait()
            writers.event(step, f"SIGTERM: checkpoint of step {step} written; "
                          f"stopping")
            return _finish(config, workdir, step, metrics, val, timer,
                           writers, checkpoints, loaders, preempted=True)
      report = plan[-1].report
      extra = {}
      if report is not None and feed is not None:
        extra = report(state, training_for(plan[-1]), loaders.validation, feed)
        writers.write(step, {k: v for k, v in extra.items()
                             if isinstance(v, float)}, prefix="validation")
        writers.event(step, "final: " + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in extra.items()))
      return _finish(config, workdir, step, metrics, val, timer,
                     writers, checkpoints, loaders, preempted=False,
                     extra=extra)
    finally:
      trace.close()
      preemption.close()
  except BaseException:
    # A failure before `_finish` (a warm start, a data error, Ctrl-C)
    # still closes the manager: its background threads must not outlive
    # the interpreter ("cannot schedule new futures" at exit).
    with contextlib.suppress(Exception):
      checkpoints.close()
    with contextlib.suppress(Exception):
      loaders.close()
    raise


def _header(config, plan, training_for, loaders) -> str:
  from iiet_jax.parallel import mesh as mesh_lib
  last = training_for(plan[-1])
  cfg = last.model.config
  iterations = (cfg.iterations if registry.get(cfg.arch).implicit_iterations
                else "-")
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  params = f"{count(last.abstract_state.params):,} ({cfg.arch})"
  if len(plan) > 1:
    first = training_for(plan[0])
    params += (f"; {count(first.abstract_state.params):,} while "
               f"{plan[0].name}")
  phases = ", then ".join(f"{p.name} for steps {p.start + 1}-{p.end}"
                          for p in plan if p.end > p.start)
  if config.init_from:
    phases += f" (parameters from {config.init_from})"
  return "\n".join([
      f"model      {config.get('variant', cfg.arch)} ({cfg.arch}, "
      f"{cfg.num_layers} layers, d={cfg.d_model}, iterations="
      f"{iterations})",
      f"parameters {params}",
      f"NFE        {sum(cfg.block_evaluations_per_layer())} block "
      f"evaluations per token ({cfg.arch})",
      f"phases     {phases}",
      f"mesh       {mesh_lib.describe(last.mesh)}, "
      f"rules={config.sharding.preset}",
      f"data       {loaders.description}",
      f"batches    {config.batch_size} x {config.seq_len} tokens, "
      f"{config.data.packing} packing, tokenizer "
      f"{loaders.tokenizer.path if loaders.tokenizer else 'none'}"])


def _train_metrics(metrics, timer, training: Training, config) -> dict:
  out = {k: float(v) for k, v in metrics.items()}
  if timer["seconds"]:
    tp = flops.throughput(training.model.config, config.seq_len,
                          timer["tokens"], timer["seconds"],
                          training.mesh.devices.size,
                          jax.devices()[0].device_kind)
    out["tokens_per_s"] = tp["tokens_per_s"]
    out["tflops_per_device"] = tp["tflops_per_device"]
    if tp["mfu"] is not None:
      out["mfu"] = tp["mfu"]
  return out


def _finish(config, workdir, step, metrics, val, timer, writers,
            checkpoints, loaders, preempted: bool,
            extra: dict | None = None) -> dict[str, Any]:
  checkpoints.wait()
  checkpoints.close()
  loaders.close()
  summary = {
      "steps": step, "total_steps": config.total_steps,
      "preempted": preempted,
      "train_loss": float(metrics["loss"]) if "loss" in metrics else None,
      "validation_loss": val["loss"] if val else None,
      "validation_perplexity": val["perplexity"] if val else None,
      "tokens_per_s": (timer["tokens"] / timer["seconds"]
                       if timer["seconds"] else None),
      "checkpoints": str(checkpoints.directory),
      "metrics": str(workdir / "metrics.jsonl"),
      "tensorboard": str(workdir / "tensorboard"),
      **(extra or {}),
  }
  if jax.process_index() == 0:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
  writers.close()
  return summary
