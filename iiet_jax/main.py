"""Command line: `iiet train`, `iiet sweep` (or `python -m iiet_jax.main`).

  python -m iiet_jax.main --config=configs/lm.py:model=iiet,size=tiny \
      --workdir=runs/tiny [--config.KEY=VALUE ...]
  iiet train --config=... --workdir=DIR [--config.KEY=VALUE ...]
  iiet sweep --config=... --workdir=ROOT [--sweep_dry_run]

`train` (the default command) runs or resumes the configured run in
`--workdir` (iiet_jax/train/loop.py) and prints a summary at the end.
"""

from __future__ import annotations

import functools
import sys

from absl import app, flags
from ml_collections import config_flags

from iiet_jax import overrides

COMMANDS = ("train", "sweep")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/lm.py:model=iiet,size=tiny.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints, metrics, TensorBoard. An "
    "existing one is resumed.")
_SWEEP_DRY_RUN = flags.DEFINE_bool(
    "sweep_dry_run", False, "sweep: print one command per run, run nothing.")


def print_summary(s: dict) -> None:
  fmt = lambda v, f: "-" if v is None else format(v, f)
  print(f"\nsummary    {s['steps']}/{s['total_steps']} steps"
        f"{' (stopped by SIGTERM; rerun to resume)' if s['preempted'] else ''}")
  print(f"  train loss       {fmt(s['train_loss'], '.4f')}")
  print(f"  validation loss  {fmt(s['validation_loss'], '.4f')}  perplexity "
        f"{fmt(s['validation_perplexity'], '.1f')}")
  print(f"  tokens/s         {fmt(s['tokens_per_s'], ',.0f')}")
  print(f"  checkpoints      {s['checkpoints']}")
  print(f"  metrics          {s['metrics']} (TensorBoard: {s['tensorboard']})")


def main(argv, command: str) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError(
        "--config is required, e.g. --config=configs/lm.py:model=iiet,size=tiny")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required: where checkpoints and "
                         "metrics go (an existing run there is resumed).")
  if command == "sweep":
    from iiet_jax import sweep
    extra = [a for a in sys.argv[1:] if a.startswith("--config.")]
    try:
      sys.exit(sweep.sweep(overrides.config_spec(sys.argv), _WORKDIR.value,
                           extra, _SWEEP_DRY_RUN.value))
    except overrides.OverrideError as err:
      sys.exit(f"Config error: {err}")

  from iiet_jax import checkpoint
  from iiet_jax.data.documents import CorpusError
  from iiet_jax.data.pipeline import PipelineError
  from iiet_jax.data.tokenizer import TokenizerError
  from iiet_jax.models import ConfigError
  from iiet_jax.parallel import multihost
  from iiet_jax.parallel.mesh import MeshError
  from iiet_jax.parallel.sharding import ShardingError
  from iiet_jax.stages.merge import MergeError
  from iiet_jax.stages.pretrain import PlanError
  from iiet_jax.train import loop

  multihost.initialize()
  try:
    summary = loop.train(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, MeshError, ShardingError, PlanError) as err:
    sys.exit(f"Config error: {err}")
  except (CorpusError, PipelineError, TokenizerError, FileNotFoundError) as err:
    sys.exit(f"Data error: {err}")
  except (checkpoint.CheckpointError, MergeError) as err:
    sys.exit(f"Checkpoint error: {err}")
  print_summary(summary)


def run(argv: list[str] | None = None) -> None:
  """Console script `iiet`: `iiet [train|sweep] --config=... --workdir=...`."""
  argv = list(sys.argv if argv is None else argv)
  command = "train"
  if len(argv) > 1 and not argv[1].startswith("-"):
    command = argv.pop(1)
    if command not in COMMANDS:
      sys.exit(f"Unknown command {command!r}; choose one of "
               f"{', '.join(COMMANDS)}.")
  spec = overrides.config_spec(argv)
  keys = overrides.override_keys(argv)
  if spec and keys:
    try:
      overrides.check_keys(overrides.load_config_file(spec)[0], keys)
    except overrides.OverrideError as err:
      sys.exit(f"Config error: {err}")
  sys.argv = argv
  app.run(functools.partial(main, command=command), argv=argv)


if __name__ == "__main__":
  run()
