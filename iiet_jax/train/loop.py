"""The one training loop every stage runs in.

  summary = train(config, workdir)

Plans the run's phases (`stages.pretrain`), resumes from the newest readable
checkpoint in `workdir` (or starts fresh, optionally warm-started), then
steps through the phases, switching models between them. Around the pure
`train_step` it feeds batches, logs metrics (screen, metrics.jsonl,
TensorBoard), evaluates every `eval_every` steps, and checkpoints every
`checkpoint.every` steps, at each phase end and on SIGTERM, after which it
returns normally so the process exits 0. With several processes, a SIGTERM
to any of them stops all of them after the same step, with no per-step
collective (`parallel/preemption.py`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from etils import epath
import jax
import numpy as np

from iiet_jax import checkpoint as ckpt_lib
from iiet_jax.data.loader import make_loaders
from iiet_jax.parallel import multihost
from iiet_jax.parallel.preemption import Preemption
from iiet_jax import stages
from iiet_jax.stages import pretrain
from iiet_jax.stages import switch_init
from iiet_jax.stages import warm_start
from iiet_jax.train import flops
from iiet_jax.train import profiling
from iiet_jax.train import step as step_lib
from iiet_jax.train.build import Training, build_training
from iiet_jax.train.writers import MetricWriters


def abstract_state(training: Training):
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      training.abstract_state, training.state_shardings)


def evaluate(training: Training, params, batches, feed) -> dict[str, float]:
  """Mean next-token loss over the validation batches."""
  nll = count = 0.0
  for batch in batches:
    sums = training.eval_step(params, feed(batch))
    nll += float(sums["nll"])
    count += float(sums["count"])
  loss = nll / max(count, 1.0)
  return {"loss": loss, "perplexity": float(np.exp(loss)), "tokens": count}


def train(config, workdir: epath.PathLike) -> dict[str, Any]:
  """Runs (or resumes) the configured run in `workdir`; returns a summary."""
  workdir = epath.Path(workdir)
  if "://" not in str(workdir):  # Orbax needs absolute local paths.
    workdir = epath.Path(os.path.abspath(workdir))
  workdir.mkdir(parents=True, exist_ok=True)
  plan = stages.plan(config)
  trace = profiling.StepTrace(config, workdir / "tensorboard")
  loaders = make_loaders(config)
  built: dict[str, Training] = {}

  def training_for(phase: pretrain.Phase) -> Training:
    if phase.name not in built:
      if phase.build is None:
        built[phase.name] = build_training(phase.config,
                                           batch_keys=loaders.batch_keys)
      else:
        built[phase.name] = phase.build(phase.config, loaders.batch_keys,
                                        loaders, workdir)
    return built[phase.name]

  def description(phase: pretrain.Phase) -> dict[str, Any]:
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
    return abstract_state(training_for(phase))

  writers = MetricWriters(str(workdir), config.total_steps,
                          enabled=jax.process_index() == 0,
                          log_every=config.log_every)
  checkpoints = ckpt_lib.Checkpoints(
      workdir / "checkpoints", keep=config.checkpoint.keep,
      keep_best=config.checkpoint.keep_best,
      async_save=config.checkpoint.async_save)
  config_json = json.loads(config.to_json_best_effort())
  restored = checkpoints.restore(abstract_state(training_for(plan[0])),
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
        fresh = training.init_state(config.seed + 1)
        previous = training_for(plan[index - 1])
        state, report = pretrain.switch(
            state, fresh, training.model.config, config.get("switch"),
            lambda params: _residual_sums(previous, params, loaders,
                                          config))
        phase_name = phase.name
        init = ""
        if "history_init" in report:
          init = (f"; history {report['history_init']}, norms "
                  f"{report['norm_init']}")
        writers.event(step, f"switched to {phase.name} at step {step}: "
                      f"{report['carried']} parameter tensors carried, "
                      f"{len(report['new'])} new{init}")
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
          writers.write(step, _train_metrics(metrics, timer, training, config))
          writers.progress(step, _train_metrics(metrics, timer, training,
                                                config))
        evaluated = None
        if step % config.eval_every == 0 or step == config.total_steps:
          val = evaluate(training, state.params, loaders.validation, feed)
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
    report = getattr(training_for(plan[-1]), "report", None)
    extra = {}
    if report is not None and feed is not None:
      extra = report(state, loaders.validation, feed)
      writers.write(step, {k: v for k, v in extra.items()
                           if isinstance(v, float)}, prefix="validation")
      writers.event(step, "final: " + ", ".join(
          f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
          for k, v in extra.items()))
    return _finish(config, workdir, step, metrics, val, timer,
                   writers, checkpoints, loaders, preempted=False, extra=extra)
  finally:
    trace.close()
    preemption.close()


def _residual_sums(previous: Training, params, loaders, config):
  """Switch-time norm fit: residual-stream sums of the Transformer++ over
  the next `switch.fit_batches` training batches, peeked (the iterator is
  put back, so the run's data order is unchanged)."""
  shardings = step_lib.batch_shardings(loaders.batch_keys, previous.mesh,
                                       previous.rules)
  fn = step_lib.ShardedStep(
      switch_init.sums_fn(previous.model, previous.model.config.ln_eps),
      previous.mesh, previous.rules,
      in_shardings=(previous.state_shardings.params, shardings),
      out_shardings=jax.sharding.NamedSharding(
          previous.mesh, jax.sharding.PartitionSpec()))
  position = loaders.train.get_state()
  batches = [next(loaders.train) for _ in range(config.switch.fit_batches)]
  loaders.train.set_state(position)
  return switch_init.accumulate(
      lambda b: fn(params, multihost.global_batch(b, shardings,
                                                  config.batch_size)),
      batches)


def _header(config, plan, training_for, loaders) -> str:
  from iiet_jax.parallel import mesh as mesh_lib
  last = training_for(plan[-1])
  cfg = last.model.config
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  params = f"{count(last.abstract_state.params):,} ({cfg.arch})"
  if len(plan) > 1:
    first = training_for(plan[0])
    params += (f"; {count(first.abstract_state.params):,} while "
               f"{plan[0].name}")
  phases = ", then ".join(f"{p.name} for steps {p.start + 1}-{p.end}"
                          for p in plan)
  return "\n".join([
      f"model      {config.get('variant', cfg.arch)} ({cfg.arch}, "
      f"{cfg.num_layers} layers, d={cfg.d_model}, iterations="
      f"{cfg.iterations if cfg.arch == 'iiet' else '-'})",
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
