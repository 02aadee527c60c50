"""Assembles model, optimizer, mesh, sharded state and jitted steps from a config.

The one place that reads the training parts of a config; the training loop,
the ahead-of-time compile check and the benchmarks all start here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import optax
from jax.sharding import Mesh

from iiet_jax.models import LanguageModel, build_model
from iiet_jax.parallel import sharding as shd
from iiet_jax.train import state as state_lib
from iiet_jax.train import step as step_lib
from iiet_jax.train.optimizer import make_optimizer


@dataclasses.dataclass
class Training:
  model: LanguageModel
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  mesh: Mesh
  rules: shd.Rules
  abstract_state: Any
  state_shardings: Any
  train_step: step_lib.ShardedStep
  eval_step: step_lib.ShardedStep
  global_batch: int
  seq_len: int

  def init_state(self, seed: int):
    state, _ = state_lib.create_sharded_state(
        self.model, self.tx, self.seq_len, jax.random.key(seed), self.mesh,
        self.rules)
    return state

  def sharded_state(self):
    """The abstract state on its shardings (a restore target)."""
    return shd.placed(self.abstract_state, self.state_shardings)


def build_training(config, devices: Sequence[jax.Device] | None = None,
                   batch_keys=("tokens",)) -> Training:
  model = build_model(config.model)
  mesh, rules = shd.from_config(config, devices)
  data_shards = shd.axis_size(mesh, dict(rules)["activation_batch"])
  rows = config.batch_size // config.micro_batches
  if config.batch_size % config.micro_batches or rows % data_shards:
    raise shd.ShardingError(
        f"batch_size={config.batch_size} with micro_batches="
        f"{config.micro_batches} gives micro-batches of "
        f"{config.batch_size / config.micro_batches:g} rows, which must be a "
        f"whole multiple of the {data_shards} data shards of the mesh.")
  skip = config.get("nonfinite", "stop") == "skip"
  tx, schedule = make_optimizer(
      config.optimizer, config.total_steps,
      max_skips=config.nonfinite_max_skips if skip else 0)
  abstract, shardings = state_lib.state_shardings(model, tx, config.seq_len,
                                                  mesh, rules)
  train_fn = step_lib.make_train_step(
      model, tx, schedule, config.micro_batches, config.z_loss,
      history_lr_scale=config.optimizer.get("history_lr_scale", 1.0))
  return Training(
      model=model, tx=tx, schedule=schedule, mesh=mesh, rules=rules,
      abstract_state=abstract, state_shardings=shardings,
      train_step=step_lib.jit_train_step(train_fn, shardings, mesh, rules,
                                         batch_keys),
      eval_step=step_lib.jit_eval_step(step_lib.make_eval_step(model),
                                       shardings.params, mesh, rules,
                                       batch_keys),
      global_batch=config.batch_size, seq_len=config.seq_len)
