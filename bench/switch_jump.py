"""The loss jump at the Transformer++ -> IIET switch, piece by piece.

  python bench/switch_jump.py --workdir=runs/reproduce/transformer/seed_0 \
      [--step=450] [--config=configs/reproduce.py:size=tiny,system=two_stage]

Takes the Transformer++ parameters of `--workdir` at the switch step, puts
them into the two-stage IIET exactly as the switch does (stages/pretrain.py)
and evaluates the validation loss before any IIET step, for every
combination of `switch.history_init` (average | inherit) and
`switch.norm_init` (unit | fit), beside the Transformer++ itself. That
isolates what the new parameters' init costs; what fresh Adam moments and
the late learning rate add shows only in training (the two-stage rows of
bench/reproduce.py). The norm fit uses the first training batches.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from iiet_jax import overrides as ov
from iiet_jax.runs import open_model
from iiet_jax.data.loader import make_loaders
from iiet_jax.iiad.influence import mean_loss
from iiet_jax.models import build_model
from iiet_jax.stages import switch_init
from iiet_jax.models import registry
from iiet_jax.train import merge as merge_lib


def jumps(workdir: str, step: int, spec: str) -> dict:
  config = ov.load(spec)
  loaders = make_loaders(config)
  fit_batches = [next(loaders.train) for _ in range(config.switch.fit_batches)]
  loaders.close()
  val = loaders.validation
  saved = open_model(workdir, step=step)
  tf_model, tf_params = saved.model, saved.params
  if tf_model.config.arch != "transformer":
    raise SystemExit(f"{workdir} step {step} is a {tf_model.config.arch}, "
                     f"not the Transformer++ of a switch")
  iiet = build_model(config.model)
  fresh = nn.unbox(iiet.init(jax.random.key(config.seed + 1),
                             jnp.zeros((1, config.seq_len), jnp.int32))
                   ["params"])
  merged, _ = merge_lib.merge(tf_params, fresh,
                              allow_new=registry.ADDED_PARAMS)
  fit = jax.jit(switch_init.sums_fn(tf_model, tf_model.config.ln_eps))
  sums = switch_init.accumulate(lambda b: fit(tf_params, b), fit_batches)
  out = {"workdir": workdir, "step": step,
         "transformer": mean_loss(tf_model, tf_params, val), "iiet": {}}
  for history, norm in itertools.product(switch_init.HISTORY_INITS,
                                         switch_init.NORM_INITS):
    cfg = ml_collections.ConfigDict(dict(history_init=history,
                                         norm_init=norm, fit_batches=1))
    params, _ = switch_init.initialise(merged, config.model.arch,
                                       config.model.num_layers, cfg, sums)
    loss = mean_loss(iiet, params, val)
    out["iiet"][f"{history}+{norm}"] = loss
    print(f"history {history:8s} norms {norm:5s}  validation loss "
          f"{loss:.4f}  jump {loss - out['transformer']:+.4f}", flush=True)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--step", type=int, default=450)
  parser.add_argument("--config",
                      default="configs/reproduce.py:size=tiny,system=two_stage")
  args = parser.parse_args()
  result = jumps(args.workdir, args.step, args.config)
  print(f"Transformer++ at step {args.step}: validation loss "
        f"{result['transformer']:.4f}")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
