"""A run config checked whole before anything touches disk.

`iiet train` calls `check_run` before the corpus is prepared, the workdir is
created or a checkpoint manager starts, so a bad value costs no time and
leaves nothing behind. Each check asks the module that owns the value (the
model config, the plan, the mesh and sharding rules, the optimizer) by
building the run's parts abstractly: nothing is allocated or compiled.
"""

from __future__ import annotations

import os
import tempfile

from etils import epath

from iiet_jax.errors import UserError
from iiet_jax.models.config import ConfigError


class WorkdirError(UserError, ValueError):
  """A --workdir that cannot hold a run."""

  kind = "Workdir"


def check_workdir(workdir: str) -> epath.Path:
  """The absolute workdir, refused when it is a file or not writable."""
  if "://" in str(workdir):  # remote storage: its client checks access
    return epath.Path(workdir)
  path = os.path.abspath(os.path.expanduser(str(workdir)))
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"--workdir={workdir} is a file, not a folder; give "
                       f"a folder for the run (new or an existing run).")
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise WorkdirError(f"--workdir={workdir}: {existing} is a file, so no "
                       f"folder can be created below it; choose another "
                       f"--workdir.")
  try:  # a probe, as permission bits do not bind root or read-only mounts
    tempfile.TemporaryFile(dir=existing).close()
  except OSError:
    raise WorkdirError(f"--workdir={workdir}: {existing} is not writable by "
                       f"this user; choose a writable --workdir or change "
                       f"the folder's permissions.") from None
  return epath.Path(path)


def check_config(config) -> None:
  """Every value of a run config that can be checked without data."""
  from iiet_jax import stages
  from iiet_jax.data import pipeline, sources
  from iiet_jax.models import ModelConfig
  from iiet_jax.train import profiling
  from iiet_jax.train.build import build_training
  model = ModelConfig.from_dict(config.model)
  if config.seq_len > model.max_seq_len:
    raise ConfigError(
        f"seq_len={config.seq_len} exceeds model.max_seq_len="
        f"{model.max_seq_len}, the longest sequence the model takes; lower "
        f"--config.seq_len or raise --config.model.max_seq_len.")
  if config.micro_batches < 1:
    raise ConfigError(f"micro_batches={config.micro_batches} must be >= 1 "
                      f"(1: no gradient accumulation).")
  if config.checkpoint.keep < 1:
    raise ConfigError(f"checkpoint.keep={config.checkpoint.keep} must be "
                      f">= 1, so the run can always resume.")
  for key in ("log_every", "eval_every"):
    if config[key] < 1:
      raise ConfigError(f"{key}={config[key]} must be >= 1 (steps).")
  if config.checkpoint.every < 1:
    raise ConfigError(f"checkpoint.every={config.checkpoint.every} must be "
                      f">= 1 (steps).")
  data = config.data
  if data.get("seed") is not None and data.seed < 0:
    raise ConfigError(f"data.seed={data.seed} must be >= 0 (the data order; "
                      f"unset, config.seed sets it).")
  if data.source not in sources.SOURCES:
    raise pipeline.PipelineError(
        f"data.source={data.source!r} is unknown; choose one of "
        f"{', '.join(sources.SOURCES)}.")
  if data.get("packing", "first_fit") not in pipeline.PACKINGS:
    raise pipeline.PipelineError(
        f"data.packing={data.packing!r} is unknown; choose one of "
        f"{', '.join(pipeline.PACKINGS)}.")
  if config.get("stage", "pretrain") == "distill" and not \
      config.distill.teacher:
    raise ConfigError("stage=distill needs --config.distill.teacher: the "
                      "workdir of a trained IIET run.")
  profiling.window(config)
  for phase in stages.plan(config):
    # Model, mesh, sharding rules, micro-batches and optimizer schedule.
    build_training(phase.config)


def check_run(config, workdir: str) -> epath.Path:
  """`check_workdir` and `check_config`; returns the absolute workdir."""
  path = check_workdir(workdir)
  check_config(config)
  return path
