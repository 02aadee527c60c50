"""Command-line entry point.

  python -m iiet_jax.main --config=configs/lm.py:model=iiet,size=tiny

Builds the configured model and its sharded train step on all local devices
and trains for `total_steps` steps on the Python standard library's own
source (bytes as token ids, so nothing needs downloading), logging loss,
tokens/s, TFLOP/s per device and MFU.
"""

from __future__ import annotations

import sys
import sysconfig
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags
import numpy as np

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/lm.py:model=iiet,size=tiny.",
    lock_config=True)


def stdlib_bytes(num_bytes: int) -> np.ndarray:
  """The first `num_bytes` of the standard library's .py files, sorted by path."""
  root = Path(sysconfig.get_paths()["stdlib"])
  chunks, total = [], 0
  for path in sorted(root.glob("*.py")):
    data = path.read_bytes()
    chunks.append(data)
    total += len(data)
    if total >= num_bytes:
      break
  if total < num_bytes:
    raise RuntimeError(f"Only {total} bytes of .py source under {root}; "
                       f"need {num_bytes}.")
  return np.frombuffer(b"".join(chunks)[:num_bytes], dtype=np.uint8)


def stdlib_batches(batch: int, seq_len: int, vocab_size: int, steps: int):
  """Consecutive [batch, seq_len] windows of stdlib bytes (ids mod vocab)."""
  data = stdlib_bytes(batch * seq_len * steps).astype(np.int32) % vocab_size
  for step in range(steps):
    rows = data[step * batch * seq_len:(step + 1) * batch * seq_len]
    yield {"tokens": rows.reshape(batch, seq_len)}


def train_demo(config) -> dict[str, float]:
  """Trains for `config.total_steps` steps, logging loss and throughput."""
  import jax
  from iiet_jax.parallel import mesh as mesh_lib
  from iiet_jax.train import flops
  from iiet_jax.train.build import build_training

  start = time.perf_counter()
  training = build_training(config)
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
  print(f"data       {config.batch_size} x {config.seq_len} tokens of Python "
        f"stdlib source per step (bytes as ids)")
  kind = jax.devices()[0].device_kind
  losses, timed_tokens, timed_seconds = [], 0, 0.0
  log_every = max(1, config.total_steps // 10)
  batches = stdlib_batches(config.batch_size, config.seq_len,
                           cfg.vocab_size, config.total_steps)
  for step, batch in enumerate(batches, start=1):
    t0 = time.perf_counter()
    state, metrics = training.train_step(state, batch)
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
  print(f"loss       {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} "
        f"steps (ln V = {np.log(cfg.vocab_size):.4f})")
  print(f"time       {time.perf_counter() - start:.1f}s (compile included)")
  return {"first_loss": losses[0], "last_loss": losses[-1],
          "parameters": num_params}


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
  multihost.initialize()
  try:
    train_demo(_CONFIG.value)
  except (ConfigError, MeshError, ShardingError) as err:
    sys.exit(f"Config error: {err}")


def run() -> None:
  """Console script `iiet`."""
  app.run(main, argv=sys.argv)


if __name__ == "__main__":
  run()
