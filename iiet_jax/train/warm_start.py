"""Warm start: parameters only, from another run's latest checkpoint.

The source model is rebuilt from the description saved with its checkpoint,
its parameters are restored straight into this run's shardings, and merged
into the fresh parameters. Any parameter present on one side only is an
error unless `config.init_allow_new` / `init_allow_dropped` name it (regexes
on paths such as `decoder/history/`); shapes must match. The optimizer state
and step stay fresh.
"""

from __future__ import annotations

from iiet_jax import checkpoint as ckpt_lib
from iiet_jax.models import build_model
from iiet_jax.parallel import sharding as shd
from iiet_jax.train import merge as merge_lib


def load_params(state, training, config):
  """`state` with its parameters replaced by those of `config.init_from`."""
  run = ckpt_lib.saved_run(config.init_from)
  source_model = build_model(run.model_config())
  target = shd.placed_params(source_model, training.mesh, training.rules,
                             config.seq_len)
  params, _ = merge_lib.merge(
      ckpt_lib.restore_params(run, target), state.params,
      allow_new=tuple(config.init_allow_new),
      allow_dropped=tuple(config.init_allow_dropped))
  return state.replace(params=params)
