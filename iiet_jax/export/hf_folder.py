"""`iiet export` and `iiet import`: a checkpoint <-> a Hugging Face folder.

An export folder holds config.json, generation_config.json,
model.safetensors (SPEC.md section 6 names; above `--max_shard_size`,
shards with their index: tensor_file.py), the run's tokenizer as
tokenizer.json (+ its SentencePiece tokenizer.model; hf_tokenizer.py), our
PyTorch model code for IIET / PCformer (iiet_jax/pytorch, reached through
`auto_map`) and iiet_export.json (where it came from). Transformer++ folders
are stock Llama folders: no remote code at all.

Import reads such a folder (ours or any Llama-layout one with these names)
into a parameters-only Orbax checkpoint, which `iiet train
--config.init_from=DIR` continues from and every read-only command
(export, score, generate, influence) opens like a trained run.

Export writes into a hidden sibling directory and renames it into place at
the end, so a failure leaves nothing behind; a staging folder left by a
killed export (its process gone) is removed by the next one. Import holds
the new run's lock (iiet_jax/lock.py) like training does, stages beside it
and moves the checkpoint in last.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from pathlib import Path

import jax
import ml_collections
import numpy as np

from iiet_jax import checkpoint as ckpt_lib
from iiet_jax import lock
from iiet_jax import pytorch
from iiet_jax import storage
from iiet_jax.export import hf_tokenizer, names, tensor_file
from iiet_jax.export.names import ExportError
from iiet_jax.models import ModelConfig, registry

DTYPES = {"float32": np.float32, "bfloat16": jax.numpy.bfloat16}
PYTORCH_DIR = Path(pytorch.__file__).parent
CONFIG_FILE = Path(__file__).resolve().parents[2] / "configs" / "lm.py"


def _check_out(out: Path, overwrite: bool) -> None:
  if out.exists() and not out.is_dir():
    raise ExportError(f"--out={out} is a file; give a directory.")
  ours = (lock.NAME, f".{lock.NAME}")   # the lock and its temporary file
  held = out.is_dir() and any(not p.name.startswith(ours)
                              for p in out.iterdir())
  if held and not overwrite:
    raise ExportError(f"--out={out} is not empty; pass --overwrite to "
                      f"replace it, or choose a new directory.")


def _staged(out: Path):
  """A fresh hidden sibling of `out` to write into before the rename; the
  staging folders that earlier writes on this host left behind (their
  process is gone) are removed. Another host's are left alone: its pids
  mean nothing here."""
  out.parent.mkdir(parents=True, exist_ok=True)
  prefix = f".{out.name}.partial-{socket.gethostname()}-"
  for old in out.parent.glob(prefix + "*"):
    pid = old.name[len(prefix):]
    if not pid.isdigit() or not lock.pid_alive(int(pid)):
      shutil.rmtree(old, ignore_errors=True)
  stage = out.parent / f"{prefix}{os.getpid()}"
  shutil.rmtree(stage, ignore_errors=True)
  stage.mkdir()
  return stage


def _publish(stage: Path, out: Path) -> None:
  if out.exists():
    shutil.rmtree(out)
  stage.rename(out)


@contextlib.contextmanager
def _written(out: Path):
  """Turns a failed write (a full disk, say) into one ExportError line."""
  try:
    yield
  except Exception as err:
    failure = storage.write_failure(err)
    if failure is None:
      raise
    raise ExportError(f"Writing {out} failed: {failure.reason} "
                      f"({failure.detail}). {failure.fix}, then run the "
                      f"command again.") from None


def tokenizer_files(folder: Path, tokenizer, max_len: int) -> None:
  """tokenizer.json (+ tokenizer.model) and its configs: hf_tokenizer.py."""
  hf_tokenizer.write(folder, tokenizer, max_len)


def _json(path: Path, value) -> None:
  path.write_text(json.dumps(value, indent=2) + "\n")


def export(workdir: str, out: str, step: int | None = None,
           dtype: str = "float32", overwrite: bool = False,
           max_shard_size: int | str | None = None) -> Path:
  """Writes the HF folder of `workdir`'s checkpoint `step` (newest), in
  shards of at most `max_shard_size` bytes (e.g. "500MB"; default
  tensor_file.MAX_SHARD_SIZE) when larger."""
  from iiet_jax.runs import open_model
  if dtype not in DTYPES:
    raise ExportError(f"--dtype={dtype!r}; choose one of "
                      f"{', '.join(DTYPES)}.")
  if max_shard_size is None:
    max_shard_size = tensor_file.MAX_SHARD_SIZE
  tensor_file.parse_size(max_shard_size)  # a bad value fails before reading
  out_dir = Path(out).absolute()
  _check_out(out_dir, overwrite)
  saved = open_model(workdir, step=step)
  cfg = saved.model.config
  tokenizer = saved.tokenizer()
  if tokenizer.vocab_size > cfg.vocab_size:
    raise ExportError(f"The tokenizer has {tokenizer.vocab_size} pieces but "
                      f"the model only {cfg.vocab_size} embeddings.")
  tensors = names.to_hf(jax.device_get(saved.params), cfg)
  stage = _staged(out_dir)
  try:
    with _written(out_dir):
      _write_export(stage, saved, tensors, tokenizer, dtype, max_shard_size,
                    workdir)
    _publish(stage, out_dir)
  except BaseException:
    shutil.rmtree(stage, ignore_errors=True)
    raise
  return out_dir


def _write_export(stage: Path, saved, tensors, tokenizer, dtype: str,
                  max_shard_size, workdir: str) -> None:
  cfg = saved.model.config
  arch = registry.get(cfg.arch)
  tensor_file.save(stage, tensors, DTYPES[dtype], max_shard_size)
  _json(stage / "config.json", names.hf_config(
      cfg, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, dtype))
  _json(stage / "generation_config.json", {
      "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
      "pad_token_id": tokenizer.pad_id, "use_cache": arch.hf_use_cache})
  tokenizer_files(stage, tokenizer, cfg.max_seq_len)
  for name in pytorch.SHIPPED_FILES if arch.remote_code else ():
    shutil.copyfile(PYTORCH_DIR / name, stage / name)
  _json(stage / "iiet_export.json", {
      "workdir": str(Path(workdir).absolute()), "step": saved.step,
      "model": saved.description, "dtype": dtype})


def _base_config(arch: str) -> ml_collections.ConfigDict:
  """The run config an imported model trains with when none is given."""
  from iiet_jax.overrides import OverrideError, load
  try:
    return load(f"{CONFIG_FILE}:model={arch},size=tiny")
  except OverrideError as err:
    raise ExportError(f"{err} Pass --config=FILE[:ARG].") from err


def _read_config(src: Path) -> dict:
  path = src / "config.json"
  try:
    return json.loads(path.read_text())
  except ValueError as err:
    raise ExportError(f"{path} is not valid JSON ({err}); restore it from "
                      f"the model's source, or export the model again.") \
        from None


def _move_in(stage: Path, out: Path) -> None:
  """Replaces `out`'s contents (its lock stays) with `stage`'s, the
  checkpoints last: a kill before then leaves no run that looks whole."""
  for old in out.iterdir():
    if old.name == lock.NAME:
      continue
    if old.is_dir():
      shutil.rmtree(old)
    else:
      old.unlink()
  for new in sorted(stage.iterdir(), key=lambda p: p.name == "checkpoints"):
    new.rename(out / new.name)
  stage.rmdir()


def import_folder(hf_dir: str, workdir: str,
                  config: ml_collections.ConfigDict | None = None,
                  overwrite: bool = False) -> Path:
  """Writes `workdir`/checkpoints/0 from the HF folder `hf_dir` (one
  model.safetensors or shards with their index), tensor by tensor."""
  src = Path(hf_dir)
  if not (src / "config.json").is_file():
    raise ExportError(f"--hf={hf_dir} has no config.json; give a folder "
                      f"written by `iiet export` or save_pretrained.")
  fields = names.model_config(_read_config(src))
  folder = tensor_file.Folder(src)  # every header checked, no data read
  from iiet_jax.overrides import with_model
  config = config if config is not None else _base_config(fields["arch"])
  cfg = ModelConfig.from_dict({**config.model.to_dict(), **fields})
  config = with_model(config, cfg)
  with config.unlocked():
    config.switch_at = 0.0
    config.variant = f"imported from {src.absolute()}"
  out_dir = Path(workdir).absolute()
  _check_out(out_dir, overwrite)
  created = not out_dir.exists()
  out_dir.mkdir(parents=True, exist_ok=True)
  acquired = False
  try:
    with lock.held(out_dir, "import"):
      acquired = True
      _check_out(out_dir, overwrite)   # as it is now the lock is held
      _import_into(out_dir, src, folder, cfg, config)
  except BaseException:
    if created and acquired:   # nothing of a failed import stays behind
      shutil.rmtree(out_dir, ignore_errors=True)
    raise
  return out_dir


def _import_into(out_dir: Path, src: Path, folder, cfg, config) -> None:
  # Names and shapes are checked before anything is read or created; each
  # tensor goes straight into the sharding training gives it (and is
  # refused when it is not finite: tensor_file.Folder.get).
  from iiet_jax.models import build_model
  from iiet_jax.parallel import sharding as shd
  mesh, rules = shd.from_config(config)
  params = names.from_hf(folder, cfg, shd.placed_params(
      build_model(cfg), mesh, rules, config.seq_len))
  stage = _staged(out_dir)
  try:
    with _written(out_dir):
      carried = hf_tokenizer.carry(src, stage, out_dir)
      if carried:
        with config.unlocked():
          config.data.tokenizer = carried
      ckpt_lib.save_params(stage / "checkpoints", 0, params,
                           config.to_dict(), ckpt_lib.describe(cfg, cfg.arch))
      _move_in(stage, out_dir)
  finally:
    shutil.rmtree(stage, ignore_errors=True)
