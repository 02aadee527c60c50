"""Warm start: parameters only, from another run's latest checkpoint.

The source model is rebuilt from the description saved with its checkpoint,
its parameters are restored straight into this run's shardings, and merged
into the fresh parameters. Any parameter present on one side only is an
error unless `config.init_allow_new` / `init_allow_dropped` name it (regexes
on paths such as `decoder/history/`); shapes must match. The optimizer state
and step stay fresh.
"""

from __future__ import annotations

import os

from etils import epath
import jax
import orbax.checkpoint as ocp

from iiet_jax import checkpoint as ckpt_lib
from iiet_jax.models import ModelConfig, build_model
from iiet_jax.stages import merge as merge_lib
from iiet_jax.train import state as state_lib


def checkpoint_dir(source: str) -> epath.Path:
  """A run's workdir or its `checkpoints` directory."""
  path = epath.Path(source if "://" in source else os.path.abspath(source))
  if (path / "checkpoints").is_dir():
    path = path / "checkpoints"
  if not path.is_dir():
    raise FileNotFoundError(f"init_from={source} is not a directory; give a "
                            f"run's workdir or its checkpoints directory.")
  return path


def load_params(state, training, config):
  """`state` with its parameters replaced by those of `config.init_from`."""
  directory = checkpoint_dir(config.init_from)
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True),
      # The PyTree handler reads what StandardSave wrote, and can restore
      # a part of it: here the parameters alone.
      item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                     "model": ocp.JsonCheckpointHandler()})
  steps = manager.all_steps()
  if not steps:
    raise ckpt_lib.CheckpointError(f"init_from={config.init_from}: no "
                                   f"checkpoint in {directory}.")
  step = max(steps)
  saved = manager.restore(step, args=ocp.args.Composite(
      model=ocp.args.JsonRestore()))["model"]
  fields = {k: v for k, v in saved.items() if k != "phase"}
  source_model = build_model(ModelConfig.from_dict(fields))
  abstract, shardings = state_lib.state_shardings(
      source_model, training.tx, config.seq_len, training.mesh,
      training.rules)
  target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract.params, shardings.params)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item={"params": target},
          restore_args=ocp.checkpoint_utils.construct_restore_args(
              {"params": target}),
          partial_restore=True)))
  manager.close()
  params, _ = merge_lib.merge(
      restored["state"]["params"], state.params,
      allow_new=tuple(config.init_allow_new),
      allow_dropped=tuple(config.init_allow_dropped))
  return state.replace(params=params)
