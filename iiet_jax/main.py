"""Command-line entry point.

  python -m iiet_jax.main --config=configs/lm.py:model=iiet,size=tiny

Builds the configured model and its sharded train step on all local devices,
opens the configured corpus (by default the Python standard library's own
source, prepared and tokenised on first use, so nothing needs downloading),
trains for `total_steps` steps logging loss, tokens/s, TFLOP/s per device and
MFU, and ends with a validation pass.
"""

from __future__ import annotations

import sys
import time

from absl import app, flags
from ml_collections import config_flags
import numpy as np

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/lm.py:model=iiet,size=tiny.",
    lock_config=True)


def evaluate(training, params, batches, feed) -> dict[str, float]:
  """Mean next-token loss over the validation batches."""
  nll = count = 0.0
  for batch in batches:
    sums = training.eval_step(params, feed(batch))
    nll += float(sums["nll"])
    count += float(sums["count"])
  loss = nll / max(count, 1.0)
  return {"loss": loss, "perplexity": float(np.exp(loss)), "tokens": count}


def train_demo(config) -> dict[str, float]:
  """Trains for `config.total_steps` steps, logging loss and throughput."""
  import jax
  from iiet_jax.data.loader import make_loaders
  from iiet_jax.parallel import mesh as mesh_lib
  from iiet_jax.parallel import multihost
  from iiet_jax.train import flops
  from iiet_jax.train import step as step_lib
  from iiet_jax.train.build import build_training

  start = time.perf_counter()
  loaders = make_loaders(config)
  training = build_training(config, batch_keys=loaders.batch_keys)
  shardings = step_lib.batch_shardings(loaders.batch_keys, training.mesh,
                                       training.rules)
  feed = lambda b: multihost.global_batch(b, shardings, config.batch_size)
  cfg = training.model.config
  state = training.init_state(config.seed)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  nfe = sum(cfg.block_evaluations_per_layer())
  print(f"model      {config.variant} ({cfg.arch}, {cfg.num_layers} layers, "
        f"d={cfg.d_model}, iterations={cfg.iterations})")
  print(f"parameters {num_params:,}")
  print(f"NFE        {nfe} block evaluations per token")
  print(f"mesh       {mesh_lib.describe(training.mesh)}, "
        f"rules={config.sharding.preset}")
  print(f"data       {loaders.description}")
  print(f"batches    {config.batch_size} x {config.seq_len} tokens, "
        f"{config.data.packing} packing, tokenizer "
        f"{loaders.tokenizer.path if loaders.tokenizer else 'none'}")
  kind = jax.devices()[0].device_kind
  losses, timed_tokens, timed_seconds = [], 0, 0.0
  log_every = max(1, config.total_steps // 10)
  for step in range(1, config.total_steps + 1):
    t0 = time.perf_counter()
    state, metrics = training.train_step(state, feed(next(loaders.train)))
    loss = float(metrics["loss"])  # waits for the step
    if step > 1:  # the first step includes compilation
      timed_seconds += time.perf_counter() - t0
      timed_tokens += config.batch_size * config.seq_len
    losses.append(loss)
    if step == 1 or step % log_every == 0 or step == config.total_steps:
      line = (f"step {step:5d}  loss {loss:.4f}  "
              f"lr {float(metrics['learning_rate']):.2e}  "
              f"grad_norm {float(metrics['grad_norm']):.3f}")
      if timed_seconds:
        tp = flops.throughput(cfg, config.seq_len, timed_tokens,
                              timed_seconds, training.mesh.devices.size, kind)
        mfu = "n/a" if tp["mfu"] is None else f"{100 * tp['mfu']:.1f}%"
        line += (f"  {tp['tokens_per_s']:,.0f} tok/s  "
                 f"{tp['tflops_per_device']:.3f} TFLOP/s/device  MFU {mfu}")
      print(line, flush=True)
  loaders.close()
  val = evaluate(training, state.params, loaders.validation, feed)
  print(f"loss       {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} "
        f"steps (ln V = {np.log(cfg.vocab_size):.4f})")
  print(f"validation loss {val['loss']:.4f}  perplexity {val['perplexity']:.1f}"
        f"  over {val['tokens']:,.0f} tokens")
  print(f"time       {time.perf_counter() - start:.1f}s (compile included)")
  return {"first_loss": losses[0], "last_loss": losses[-1],
          "validation_loss": val["loss"], "parameters": num_params}


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError(
        "--config is required, e.g. --config=configs/lm.py:model=iiet,size=tiny")
  from iiet_jax.models import ConfigError
  from iiet_jax.parallel import multihost
  from iiet_jax.parallel.mesh import MeshError
  from iiet_jax.parallel.sharding import ShardingError
  from iiet_jax.data.documents import CorpusError
  from iiet_jax.data.pipeline import PipelineError
  from iiet_jax.data.tokenizer import TokenizerError
  multihost.initialize()
  try:
    train_demo(_CONFIG.value)
  except (ConfigError, MeshError, ShardingError) as err:
    sys.exit(f"Config error: {err}")
  except (CorpusError, PipelineError, TokenizerError, FileNotFoundError) as err:
    sys.exit(f"Data error: {err}")


def run() -> None:
  """Console script `iiet`."""
  app.run(main, argv=sys.argv)


if __name__ == "__main__":
  run()
