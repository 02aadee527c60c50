"""Command-line entry point.

  python -m iiet_jax.main --config=configs/lm.py:model=iiet,size=tiny

Builds the configured model, initialises it, and runs one forward pass on a
batch cut from the Python standard library's source (bytes as token ids, so
nothing needs downloading), printing the parameter count, block evaluations
per token and the next-token loss.
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


def forward_demo(config) -> dict[str, float]:
  import jax
  import jax.numpy as jnp
  from iiet_jax.models import build_model
  from iiet_jax.train.loss import next_token_loss

  model = build_model(config.model)
  cfg = model.config
  B, T = config.batch_size, config.seq_len
  tokens_BT = jnp.asarray(
      stdlib_bytes(B * T).astype(np.int32).reshape(B, T) % cfg.vocab_size)
  start = time.perf_counter()
  variables = jax.jit(model.init)(jax.random.key(config.seed), tokens_BT)
  num_params = sum(x.size for x in jax.tree.leaves(variables))
  logits_BTV = jax.jit(model.apply)(variables, tokens_BT)
  loss, _ = next_token_loss(logits_BTV, tokens_BT)
  loss = float(loss)
  seconds = time.perf_counter() - start
  nfe = sum(cfg.block_evaluations_per_layer())
  print(f"model      {config.variant} ({cfg.arch}, {cfg.num_layers} layers, "
        f"d={cfg.d_model}, iterations={cfg.iterations})")
  print(f"parameters {num_params:,}")
  print(f"NFE        {nfe} block evaluations per token")
  print(f"batch      {B} x {T} tokens of Python stdlib source")
  print(f"loss       {loss:.4f} (ln V = {np.log(cfg.vocab_size):.4f})")
  print(f"time       {seconds:.1f}s (init + forward, compile included)")
  return {"loss": loss, "parameters": num_params}


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError(
        "--config is required, e.g. --config=configs/lm.py:model=iiet,size=tiny")
  from iiet_jax.models import ConfigError
  try:
    forward_demo(_CONFIG.value)
  except ConfigError as err:
    sys.exit(f"Config error: {err}")


def run() -> None:
  """Console script `iiet`."""
  app.run(main, argv=sys.argv)


if __name__ == "__main__":
  run()
