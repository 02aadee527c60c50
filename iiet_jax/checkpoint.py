"""All checkpoint I/O: an Orbax CheckpointManager over `<workdir>/checkpoints`.

Each step directory holds four items, saved together:

  state/   the TrainState (params, optimizer state, step, tokens), written
           asynchronously; restorable onto any mesh (Orbax reshards)
  data/    the Grain iterator state, one JSON file per process
  config/  the resolved run config, for the record
  model/   the model description (every ModelConfig field, the run phase),
           enough to rebuild the model without the config file

Orbax writes a step into a temporary directory and renames it when complete,
so a crash mid-save never leaves a step that looks whole. A step that is
whole but unreadable (a lost or damaged file) is moved aside to
`<step>.unreadable` on restore, with a warning naming it, and the newest
readable step is used instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Mapping

from absl import logging
from etils import epath
import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from iiet_jax import storage
from iiet_jax.errors import UserError, warn
from iiet_jax.models.config import TREE_FIELDS

VALIDATION_METRIC = "validation_loss"


class CheckpointError(UserError, RuntimeError):
  """A workdir whose checkpoints cannot serve the requested run."""

  kind = "Checkpoint"


class CheckpointWriteError(CheckpointError):
  """A checkpoint step that could not be written: a full disk, a quota."""


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  model: dict[str, Any]       # the saved model description
  skipped: list[int]          # newer steps that could not be read


def describe(model_config, phase: str) -> dict[str, Any]:
  """The model description saved with every checkpoint."""
  desc = dict(model_config.to_dict())
  desc["iterations"] = list(desc["iterations"])
  desc["remat_save_names"] = list(desc["remat_save_names"])
  desc["phase"] = phase
  return desc


def check_compatible(saved: Mapping[str, Any], wanted: Mapping[str, Any],
                     where: str) -> None:
  """Refuses to resume a run whose parameter tree would not match."""
  # Checkpoints from before grouped-query attention had one kv head per head.
  saved = {"num_kv_heads": saved.get("num_heads"), **saved}
  diffs = [f"{k}: saved {saved.get(k)!r}, config {wanted.get(k)!r}"
           for k in TREE_FIELDS
           if _plain(saved.get(k)) != _plain(wanted.get(k))]
  if diffs:
    raise CheckpointError(
        f"{where} holds a checkpoint of a different model "
        f"({'; '.join(diffs)}). Use a new --workdir for this config, or "
        f"change the config back to resume that run.")


def _plain(value):
  return list(value) if isinstance(value, (list, tuple)) else value


class _Manager(ocp.CheckpointManager):
  """Orbax's manager, minus its own questions to JAX's preemption service.

  At every save Orbax asks `reached_preemption_sync_point(step)`, only for
  its statistics and logs. The training loop must be that service's only
  caller, since it numbers its calls and not its steps
  (iiet_jax/parallel/preemption.py). A call with a step number would move
  the service's counter, and the processes could miss the stopping point
  they agreed on.
  """

  def reached_preemption(self, step: int) -> bool:
    del step
    return False


class Checkpoints:
  """Save / restore of whole training steps in one directory."""

  def __init__(self, directory: epath.PathLike, *, keep: int = 3,
               keep_best: int = 0, async_save: bool = True):
    self.directory = epath.Path(directory)
    if keep < 1:
      raise CheckpointError(f"checkpoint.keep={keep} must be >= 1, so the "
                            f"run can always resume.")
    preserve = [policies.LatestN(n=keep)]
    if keep_best:
      preserve.append(policies.BestN(
          get_metric_fn=lambda m: m[VALIDATION_METRIC], reverse=True,
          n=keep_best, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(preserve),
        enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=True)
    self._manager = _Manager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler(),
                       "model": ocp.JsonCheckpointHandler()})
    self._writing: int | None = None  # the step whose save may be in flight
    self._failed: CheckpointWriteError | None = None
    storage.log_closed_loop_callbacks()

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, data_iterator, config: Mapping[str, Any],
           model: Mapping[str, Any],
           metrics: Mapping[str, float] | None = None) -> None:
    """Starts saving `step`; the state is written in the background.

    A write that fails here or in the background (a full disk) raises
    CheckpointWriteError, here or at the next `save` / `wait`.
    """
    self.wait()  # so a failure of the previous step is reported as its own
    self._writing = step
    with self._reporting_write_errors():
      self._manager.save(
          step, force=True, metrics=dict(metrics) if metrics else None,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              data=grain.checkpoint.CheckpointSave(data_iterator),
              config=ocp.args.JsonSave(dict(config)),
              model=ocp.args.JsonSave(dict(model))))

  def model_description(self, step: int) -> dict[str, Any]:
    restored = self._manager.restore(
        step, args=ocp.args.Composite(model=ocp.args.JsonRestore()))
    return restored["model"]

  def saved_config(self, step: int) -> dict[str, Any]:
    """The run config saved with step `step`."""
    restored = self._manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored["config"]

  def restore(self, abstract_state, data_iterator,
              check: Callable[[int, dict[str, Any]], Any] | None = None
              ) -> Restored | None:
    """The newest readable step onto `abstract_state`'s shardings.

    `abstract_state` holds `jax.ShapeDtypeStruct`s with shardings (any
    mesh). `check(step, description)` may refuse a step by raising
    CheckpointError, which is passed on, or return the abstract state to
    restore that step into (for runs whose model changes with the step).
    Returns None when there is no checkpoint at all.
    """
    def read(step: int):
      model = self.model_description(step)
      target = abstract_state
      if check is not None:
        target = check(step, model) or abstract_state
      self._check_data_files(step)
      return model, self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target),
          data=grain.checkpoint.CheckpointRestore(data_iterator)))

    found = newest_readable(self.directory, self.steps(), read, self._skip)
    if found is None:
      return None
    step, (model, restored), skipped = found
    return Restored(step, restored["state"], model, skipped)

  def _skip(self, step: int, err: Exception) -> int:
    """Moves an unreadable step aside (kept for inspection, never reused)."""
    aside = self.directory / f"{step}.unreadable"
    logging.warning("Checkpoint step %d in %s cannot be read (%s: %s); "
                    "moved to %s, falling back to the previous one.", step,
                    self.directory, type(err).__name__, str(err)[:300], aside)
    if jax.process_index() == 0:
      if aside.exists():
        aside.rmtree()
      (self.directory / str(step)).rename(aside)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"iiet_skip_checkpoint_{step}")
    self._manager.reload()
    return step

  def _check_data_files(self, step: int) -> None:
    n, i = jax.process_count(), jax.process_index()
    data = self.directory / str(step) / "data"
    if data.exists() and not (data / f"process_{i}-of-{n}.json").exists():
      saved = sorted(p.name for p in data.glob("process_*.json"))
      raise CheckpointError(
          f"Checkpoint step {step} in {self.directory} holds data-iterator "
          f"states {saved}, written by another number of processes than the "
          f"{n} running now. Resume with the same number of processes.")

  def wait(self) -> None:
    """Blocks until every save in flight is complete on disk."""
    with self._reporting_write_errors():
      self._manager.wait_until_finished()
    self._writing = None

  def close(self) -> None:
    if self._failed is None:
      self.wait()
      self._manager.close()
      return
    # Orbax's close would raise the reported failure again. The failed
    # step's temporary directory is removed by the next run's manager
    # (cleanup_tmp_directories).
    with contextlib.suppress(Exception):
      self._manager.close()

  @contextlib.contextmanager
  def _reporting_write_errors(self):
    try:
      yield
    except Exception as err:  # pylint: disable=broad-except
      failure = storage.write_failure(err)
      if failure is None:
        raise
      self._failed = CheckpointWriteError(self._write_message(failure))
      raise self._failed from err

  def _write_message(self, failure: storage.WriteFailure) -> str:
    complete = [s for s in self.steps() if s != self._writing]
    resume = (f"it resumes from step {complete[-1]}, the newest complete "
              f"checkpoint" if complete else
              "it starts afresh, as no checkpoint is complete yet")
    return (f"Cannot write checkpoint step {self._writing} in "
            f"{self.directory}: {failure.reason} ({failure.detail}). "
            f"{failure.fix}, then run the same command again: {resume}.")


@dataclasses.dataclass
class SavedRun:
  """The newest checkpoint of a run, read-only: for warm starts, teachers,
  influence and exports."""
  directory: epath.Path
  step: int
  model: dict[str, Any]     # the model description (with its phase)
  config: dict[str, Any]    # the run config, as saved

  def model_config(self, **changes):
    from iiet_jax.models import ModelConfig
    fields = {k: v for k, v in self.model.items() if k != "phase"}
    fields.update(changes)
    return ModelConfig.from_dict(fields)


def saved_steps(directory: epath.PathLike) -> list[int]:
  """The step folders under a checkpoint directory, read from its listing
  (nothing is opened; a step still being written has another name)."""
  directory = epath.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def checkpoint_dir(source: str) -> epath.Path:
  """A run's workdir or its `checkpoints` directory, as an absolute path."""
  import os
  path = epath.Path(source if "://" in source else os.path.abspath(source))
  if (path / "checkpoints").is_dir():
    path = path / "checkpoints"
  if not path.is_dir():
    raise CheckpointError(f"{source} is not a directory; give a run's "
                          f"workdir or its checkpoints directory.")
  return path


# The JSON files of a step that every reader needs.
_STEP_JSON = ("_CHECKPOINT_METADATA", "model/metadata", "config/metadata",
              "state/_METADATA")


def unreadable_file(step_dir: epath.Path) -> str | None:
  """'<file>: <why>' for the first of a step's JSON files that is missing or
  damaged, None when all parse."""
  import json
  for name in _STEP_JSON:
    path = step_dir / name
    if not path.exists():
      return f"{path}: missing"
    try:
      json.loads(path.read_text())
    except ValueError as err:
      return f"{path}: {err}"
  return None


def newest_readable(directory: epath.Path, steps: list[int],
                    read: Callable[[int], Any],
                    on_skip: Callable[[int, Exception], Any] | None = None):
  """(step, read(step), skipped steps) for the newest step `read` succeeds
  on, newest first; None when there are no steps. Every reader of a run
  (resume, warm start, teacher, export, score, generate, influence) falls
  back this way, with a warning line per skipped step. CheckpointError from
  `read` (a refusal, not damage) is passed on."""
  skipped, reasons = [], []
  for step in sorted(steps, reverse=True):
    try:
      return step, read(step), skipped
    except CheckpointError:
      raise
    except Exception as err:  # pylint: disable=broad-except
      why = (unreadable_file(directory / str(step))
             or f"{type(err).__name__}: {str(err)[:300]}")
      warn(f"checkpoint step {step} in {directory} cannot be read ({why}); "
           f"falling back to the previous one")
      if on_skip is not None:
        on_skip(step, err)
      skipped.append(step)
      reasons.append(f"step {step}: {why}")
  if not skipped:
    return None
  raise CheckpointError(
      f"No complete checkpoint in {directory}: {'; '.join(reasons)}. "
      f"Restore the files, or move the directory away to start afresh.")


def _reader(directory: epath.Path) -> ocp.CheckpointManager:
  # The PyTree handler reads what StandardSave wrote and can restore a part
  # of it: the parameters alone.
  return ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                     "model": ocp.JsonCheckpointHandler(),
                     "config": ocp.JsonCheckpointHandler()})


def saved_run(source: str, step: int | None = None) -> SavedRun:
  """Step `step` of a run (default: its newest checkpoint)."""
  directory = checkpoint_dir(source)
  manager = _reader(directory)
  steps = sorted(manager.all_steps())
  if not steps:
    raise CheckpointError(f"{source}: no checkpoint in {directory}; train a run "
                          f"there first, or give the workdir of a trained run.")
  if step is not None and step not in steps:
    manager.close()
    raise CheckpointError(f"{source} has no checkpoint of step {step}; it "
                          f"has steps {', '.join(map(str, steps))}.")

  def read(s: int):
    damaged = unreadable_file(directory / str(s))
    if damaged:  # the state's metadata too: restore_params reads it next
      raise ValueError(damaged)
    return manager.restore(s, args=ocp.args.Composite(
        model=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()))

  try:
    step, items, _ = newest_readable(directory, [step] if step is not None else steps,
                                     read)
  finally:
    manager.close()
  return SavedRun(directory, step, items["model"], items["config"])


def save_params(directory: epath.PathLike, step: int, params,
                config: Mapping[str, Any], model: Mapping[str, Any]) -> None:
  """A parameters-only checkpoint (what `iiet import` writes): readable by
  `saved_run` / `restore_params`, so warm starts and every command that
  reads a finished run accept it."""
  manager = _Manager(
      epath.Path(directory), options=ocp.CheckpointManagerOptions(create=True),
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "config": ocp.JsonCheckpointHandler(),
                     "model": ocp.JsonCheckpointHandler()})
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave({"params": params}),
      config=ocp.args.JsonSave(dict(config)),
      model=ocp.args.JsonSave(dict(model))))
  manager.wait_until_finished()
  manager.close()


def restore_params(run: SavedRun, abstract_params) -> Any:
  """The run's parameters onto `abstract_params`' shapes and shardings."""
  manager = _reader(run.directory)
  try:
    restored = manager.restore(run.step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item={"params": abstract_params},
            restore_args=ocp.checkpoint_utils.construct_restore_args(
                {"params": abstract_params}),
            partial_restore=True)))
  except (ValueError, OSError) as err:  # damaged arrays; a shape mismatch
    raise CheckpointError(
        f"The parameters of checkpoint step {run.step} in {run.directory} "
        f"cannot be read ({type(err).__name__}: {str(err)[:300]}).") from err
  finally:
    manager.close()
  return restored["state"]["params"]
