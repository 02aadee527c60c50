"""A run config checked whole before anything touches disk.

`iiet train` calls `check_run` before the corpus is prepared, the workdir is
created or a checkpoint manager starts, so a bad value costs no time and
leaves nothing behind. Each check asks the module that owns the value (the
model config, the plan, the mesh and sharding rules, the optimizer) by
building the run's parts abstractly: nothing is allocated or compiled.
"""

from __future__ import annotations

import math
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
  if "://" in str(workdir):
    return _check_bucket(str(workdir))
  path = os.path.abspath(os.path.expanduser(str(workdir)))
  if os.path.islink(path) and not os.path.exists(path):
    raise WorkdirError(f"--workdir={workdir} is a link to "
                       f"{os.readlink(path)}, which does not exist; create "
                       f"that folder, remove the link, or choose another "
                       f"--workdir.")
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


def _check_bucket(workdir: str) -> epath.Path:
  """A remote workdir whose bucket exists and answers; its client checks
  the rights at the first write (the run's lock)."""
  scheme, rest = workdir.split("://", 1)
  bucket = f"{scheme}://{rest.split('/', 1)[0]}"
  try:
    found = epath.Path(bucket).exists()
  except Exception as err:  # pylint: disable=broad-except
    raise WorkdirError(
        f"--workdir={workdir}: {bucket} cannot be reached "
        f"({type(err).__name__}: {err}); check the credentials "
        f"(gcloud auth application-default login) and the network.") from None
  if not found:
    raise WorkdirError(
        f"--workdir={workdir}: the bucket {bucket} does not exist, or this "
        f"account cannot see it; create it (gcloud storage buckets create "
        f"{bucket}) or choose another --workdir.")
  return epath.Path(workdir)


# (key, test, the range it must lie in) for numbers no module below checks.
_RANGES = (
    ("optimizer.peak_lr", lambda v: v > 0, "> 0"),
    ("optimizer.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("optimizer.end_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("optimizer.history_lr_scale", lambda v: v >= 0, ">= 0"),
    ("optimizer.b1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optimizer.b2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optimizer.eps", lambda v: v > 0, "> 0"),
    ("optimizer.weight_decay", lambda v: v >= 0, ">= 0"),
    ("optimizer.clip_norm", lambda v: v > 0, "> 0"),
    ("z_loss", lambda v: v >= 0, ">= 0"),
    ("batch_size", lambda v: v >= 1, ">= 1"),
    ("seq_len", lambda v: v >= 2, ">= 2 (inputs and next-token targets)"),
    ("data.eval_batches", lambda v: v >= 1, ">= 1 (the validation pass's "
     "batches; it is also the final validation loss)"),
    ("distill.kl_weight", lambda v: v >= 0, ">= 0"),
    ("distill.temperature", lambda v: v > 0, "> 0"),
    ("distill.influence_batches", lambda v: v >= 1, ">= 1"),
)


def _numbers(tree, prefix=""):
  """(dotted key, value) of every int / float in a config, nested."""
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if hasattr(value, "items"):
      yield from _numbers(value, name + ".")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      yield name, value


def check_numbers(config) -> None:
  """No NaN or infinity anywhere; the values of `_RANGES` in range."""
  for key, value in _numbers(config):
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"{key}={value} is not a finite number; set "
                        f"--config.{key} to a finite value.")
  for key, ok, expected in _RANGES:
    node = config
    for part in key.split("."):
      node = node.get(part) if hasattr(node, "get") else None
    if node is not None and not ok(node):
      raise ConfigError(f"{key}={node} must be {expected}; set "
                        f"--config.{key}.")


def check_config(config) -> None:
  """Every value of a run config that can be checked without data."""
  from iiet_jax import stages
  from iiet_jax.train import divergence
  check_numbers(config)
  divergence.check_config(config, ConfigError)
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


def check_resume(config, workdir: epath.Path) -> None:
  """A run saved past `total_steps` cannot be shortened."""
  from iiet_jax import checkpoint
  steps = checkpoint.saved_steps(workdir / "checkpoints")
  if steps and steps[-1] > config.total_steps:
    raise WorkdirError(
        f"--workdir={workdir} holds a run saved at step {steps[-1]}, past "
        f"total_steps={config.total_steps}: a run cannot be shortened. Give "
        f"--config.total_steps={steps[-1]} or more to go on, or a new "
        f"--workdir for a shorter run.")


def check_run(config, workdir: str) -> epath.Path:
  """`check_workdir`, `check_config` and `check_resume`; returns the
  absolute workdir."""
  path = check_workdir(workdir)
  check_config(config)
  check_resume(config, path)
  return path
