"""Saved runs: a run's checkpoint opened as a model with its parameters, its
tokenizer, and text generated from it.

Everything that reads a finished run (influence, generate, export, score, the
benchmarks) opens it here. The model is rebuilt from the checkpoint's saved
model description and config, so no config file is needed.
"""

from __future__ import annotations

import dataclasses
import json

from etils import epath
import jax
import ml_collections
import numpy as np

from iiet_jax import checkpoint as ckpt_lib
from iiet_jax.errors import UserError


class RunError(UserError, ValueError):
  """A saved run that cannot serve the request (e.g. no tokenizer)."""

  kind = "Run"


@dataclasses.dataclass
class OpenRun:
  run: ckpt_lib.SavedRun
  config: ml_collections.ConfigDict
  training: object   # iiet_jax.train.build.Training of the saved model
  params: object


def finished_summary(workdir) -> dict | None:
  """The summary.json of a run that reached its total_steps, else None: a
  run stopped early (SIGTERM, `preempted: true`) writes one too, and is
  resumed, not reported."""
  path = epath.Path(workdir) / "summary.json"
  if not path.exists():
    return None
  summary = json.loads(path.read_text())
  if summary.get("preempted") or (
      summary.get("steps", 0) < summary.get("total_steps", 0)):
    return None
  return summary


def open_run(workdir: str, batch_keys=("tokens",),
             step: int | None = None) -> OpenRun:
  """A checkpoint of `workdir` (default: the newest readable one) as a
  model with its parameters."""
  from iiet_jax.overrides import with_model
  from iiet_jax.train.build import build_training
  run = ckpt_lib.saved_run(workdir, step)
  config = with_model(ml_collections.ConfigDict(run.config),
                      run.model_config())
  with config.unlocked():
    config.stage = "pretrain"
  training = build_training(config, batch_keys=batch_keys)
  return OpenRun(run, config, training,
                 ckpt_lib.restore_params(run, training.sharded_params()))


def run_tokenizer(opened: OpenRun, workdir: str):
  """The tokenizer the run trained with (its data config says which)."""
  from iiet_jax.data import sources
  tokenizer = sources.open_inputs(opened.config.data,
                                  opened.config.model.vocab_size).tokenizer
  if tokenizer is None:
    raise RunError(f"The run in {workdir} trained on pre-tokenised records "
                   f"and has no tokenizer to read text with; score token ids "
                   f"instead (iiet score --input=ids.npy).")
  return tokenizer


def generate(workdir: str, prompt: str, max_new_tokens: int,
             temperature: float, top_k: int, top_p: float, seed: int) -> str:
  """Continues `prompt` with the run's model and tokenizer; returns text."""
  from iiet_jax import decode
  from iiet_jax.models import for_inference
  opened = open_run(workdir)
  tokenizer = run_tokenizer(opened, workdir)
  ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]
  model, params = for_inference(opened.training.model, opened.params)
  out = decode.generate(
      model, params, np.asarray([ids], np.int32),
      max_new_tokens, rng=jax.random.key(seed), temperature=temperature,
      top_k=top_k, top_p=top_p, eos_id=tokenizer.eos_id,
      pad_id=tokenizer.pad_id)
  new = [int(t) for t in np.asarray(out)[0, len(ids):]]
  if tokenizer.eos_id in new:
    new = new[:new.index(tokenizer.eos_id)]
  new = [t for t in new if t != tokenizer.pad_id]
  return prompt + tokenizer.decode(new)
