"""Pre-training, and the two-stage Transformer++ -> IIET recipe (SPEC.md 5).

With `switch_at = f` in (0, 1) a run of `total_steps` trains Transformer++
for the first round(f * total_steps) steps, then the configured IIET or
PCformer for the rest. At the switch the embedding, blocks, final norm and
head carry over bit for bit with their Adam moments; the history parameters
(W, Wc, LNp, LNc; PCformer's alpha and LNrk) start at their init with fresh
moments; the step count, and with it the learning-rate schedule, continues.
`switch_at = 0` trains the configured architecture from the start; with
`init_from` naming a Transformer++ run (e.g. an `iiet import`ed Llama
checkpoint) and an IIET / PCformer model, the run is the paper's second stage
alone: an empty Transformer++ phase warm-starts from it and the switch below
enters at step 0 (moments and step fresh, as the checkpoint has none).

How the new history parameters start is `config.switch` (switch_init.py):
the SPEC averages, or an init that keeps the inherited Transformer++
function (the default, chosen by measurement in docs/reproduction.md).
"""

from __future__ import annotations

import functools

import jax

from iiet_jax.models import registry
from iiet_jax.parallel import multihost
from iiet_jax.stages import switch_init
from iiet_jax.train import merge as merge_lib
from iiet_jax.train import step as step_lib
from iiet_jax.train.build import Training
from iiet_jax.train.loop import Phase
from iiet_jax.errors import UserError


class PlanError(UserError, ValueError):
  """A run length / switch point that cannot be scheduled."""

  kind = "Config"


def phases(config) -> list[Phase]:
  """The phases of a run; see the module doc."""
  total, switch_at = config.total_steps, float(config.switch_at)
  arch = config.model.arch
  if total < 1:
    raise PlanError(f"total_steps={total} must be >= 1.")
  if not 0.0 <= switch_at < 1.0:
    raise PlanError(f"switch_at={switch_at} must lie in [0, 1): the share of "
                    f"steps trained as Transformer++ before the switch.")
  history_init = config.get("history_init", "average")
  if history_init not in switch_init.HISTORY_INITS:
    raise PlanError(f"history_init={history_init!r}; choose one of "
                    f"{', '.join(switch_init.HISTORY_INITS)}.")
  if switch_at == 0.0 and not _switch_from_init(config):
    init = None
    if history_init != "average":
      if not registry.get(arch).history:
        raise PlanError(
            f"history_init={history_init!r} starts the history of IIET or "
            f"PCformer, but model.arch={arch!r} has none; leave it "
            f"'average'.")
      init = functools.partial(_init_history, history_init)
    return [Phase(arch, 0, total, config, init=init)]
  if "switch" in config:
    try:
      switch_init.check(config.switch)
    except switch_init.SwitchInitError as err:
      raise PlanError(str(err)) from None
  if not registry.get(arch).history:
    targets = " / ".join(f"model={a.name}" for a in registry.ARCHITECTURES
                         if a.history)
    raise PlanError(
        f"switch_at={switch_at} switches Transformer++ to an architecture "
        f"with a history, but model.arch={arch!r} has none; set switch_at=0 "
        f"or choose {targets}.")
  switch = round(switch_at * total)
  if switch_at == 0.0:
    # The paper's second stage from an imported Transformer++: an empty
    # first phase warm-starts from init_from, the switch enters at step 0.
    switch = 0
  elif not 0 < switch < total:
    raise PlanError(f"switch_at={switch_at} of total_steps={total} gives the "
                    f"switch step {switch}, leaving one phase empty.")
  first = config.copy_and_resolve_references()
  first.model.arch = registry.BASE
  second = config
  if "switch" in config and config.switch.get("history_lr_scale", 1.0) != 1:
    second = config.copy_and_resolve_references()
    second.optimizer.history_lr_scale = config.switch.history_lr_scale
  return [Phase(registry.BASE, 0, switch, first),
          Phase(arch, switch, total, second,
                enter=functools.partial(_enter, config))]


def _switch_from_init(config) -> bool:
  """Whether `init_from` is a Transformer++ this history model starts from,
  carried over the way the two-stage switch carries it."""
  if (not config.get("init_from")
      or not registry.get(config.model.arch).history):
    return False
  from iiet_jax import checkpoint as ckpt_lib
  source = ckpt_lib.saved_run(config.init_from).model
  return source.get("arch", source.get("phase")) == registry.BASE


def _init_history(history_init: str, state, training: Training):
  """The first phase's `init` hook: the history of a run trained from step
  0 starts as `history_init` (switch_init.py) instead of SPEC's averages;
  `inherit` makes the initial IIET a post-LayerNorm Transformer++."""
  cfg = training.model.config
  params, _ = switch_init.initialise(
      state.params, cfg.arch, cfg.num_layers,
      switch_init.SwitchInit(history_init=history_init, norm_init="unit"))
  return state.replace(params=params), f"history {history_init}, norms unit"


def _enter(config, state, training: Training, previous: Training, loaders):
  """The loop's `enter` hook of the phase after the switch."""
  fresh = training.init_state(config.seed + 1)
  state, report = switch(
      state, fresh, training.model.config, config.get("switch"),
      lambda params: _residual_sums(previous, params, loaders, config))
  init = ""
  if "history_init" in report:
    init = (f"; history {report['history_init']}, norms "
            f"{report['norm_init']}")
  return state, (f"{report['carried']} parameter tensors carried, "
                 f"{len(report['new'])} new{init}")


def switch(state, fresh, model_config=None, switch_cfg=None,
           residual_sums=None):
  """The state after the switch: `fresh` (the new model's initial state)
  with every parameter and moment `state` has, and `state`'s counters.

  `switch_cfg` (the config's `switch` block) re-initialises the history
  parameters of the new `model_config` (switch_init.py);
  `residual_sums(params)` gives the
  Transformer++ residual-stream sums its norm fit needs."""
  params, report = merge_lib.merge(state.params, fresh.params,
                                   allow_new=registry.ADDED_PARAMS)
  if switch_cfg is not None:
    sums = None
    if switch_cfg.norm_init == "fit":
      sums = residual_sums(state.params)
    params, init_report = switch_init.initialise(
        params, model_config.arch, model_config.num_layers, switch_cfg, sums)
    report.update(init_report)
  opt_state, _ = merge_lib.merge(state.opt_state, fresh.opt_state,
                                 allow_new=registry.ADDED_PARAMS,
                                 what="opt_state")
  new = fresh.replace(step=state.step, params=params, opt_state=opt_state,
                      tokens_hi=state.tokens_hi, tokens_lo=state.tokens_lo)
  return new, report


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
