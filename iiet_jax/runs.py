"""A saved run opened as a model: its description, parameters (placed on
their shardings), tokenizer and step; and text generated from it.

Everything that reads a finished run (export, score, generate, influence,
distillation's teacher, the benchmarks) opens it here. The model is rebuilt
from the description saved with the checkpoint and the parameters restored
onto a mesh: models/ and parallel/ alone, no optimizer, no train step, no
corpus. The tokenizer is the one the run carries in its workdir
(data/tokenizer.py `carry`, written when training starts).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

from etils import epath
import jax
import ml_collections
import numpy as np

from iiet_jax import checkpoint as ckpt_lib
from iiet_jax.data import tokenizer as tok_lib
from iiet_jax.errors import UserError
from iiet_jax.models import LanguageModel, build_model
from iiet_jax.parallel import sharding as shd


class RunError(UserError, ValueError):
  """A saved run that cannot serve the request (e.g. no tokenizer)."""

  kind = "Run"


@dataclasses.dataclass
class SavedModel:
  """One checkpoint of a run, as a model."""
  workdir: epath.Path
  step: int
  description: dict[str, Any]     # as saved: the model fields and its phase
  config: ml_collections.ConfigDict   # the run config, with that model
  model: LanguageModel
  mesh: jax.sharding.Mesh
  rules: shd.Rules
  placed: Any    # the parameters' shapes on their shardings (restore target)
  params: Any

  def params_at(self, step: int) -> Any:
    """The parameters of another checkpoint step of the same run."""
    return ckpt_lib.restore_params(ckpt_lib.saved_run(str(self.workdir), step),
                                   self.placed)

  def tokenizer(self):
    """The tokenizer the run trained with."""
    carried = tok_lib.carried_by(self.workdir)
    if carried is not None:
      return carried
    data = self.config.data
    if data.source == "tokens":
      raise RunError(f"The run in {self.workdir} trained on pre-tokenised "
                     f"records and has no tokenizer to read text with; score "
                     f"token ids instead (iiet score --input=ids.npy).")
    if data.tokenizer:   # a run saved before runs carried their tokenizer
      return tok_lib.load_tokenizer(data.tokenizer)
    raise RunError(
        f"The run in {self.workdir} was saved before runs carried their "
        f"tokenizer. Run its `iiet train` command once more (a finished run "
        f"then only writes its tokenizer into the workdir), or copy the "
        f"tokenizer .model it trained with to "
        f"{self.workdir / 'tokenizer.model'}.")


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


def open_model(workdir: str, step: int | None = None,
               devices: Sequence[jax.Device] | None = None,
               on: tuple[jax.sharding.Mesh, shd.Rules] | None = None,
               **model_changes) -> SavedModel:
  """Step `step` of the run in `workdir` (default: its newest readable
  checkpoint) as a model, on a mesh of `devices` (default: all) shaped as
  the run's config says, or on the (mesh, rules) `on` (a distillation's
  teacher goes onto its student's). `model_changes` change model fields
  that leave the parameters as they are (dtype, remat_policy)."""
  from iiet_jax.overrides import with_model
  run = ckpt_lib.saved_run(workdir, step)
  config = with_model(ml_collections.ConfigDict(run.config),
                      run.model_config(**model_changes))
  with config.unlocked():
    # A distilled run's data config would ask for teacher outputs; a reader
    # (the influence measure, say) feeds it plain batches.
    config.stage = "pretrain"
  model = build_model(config.model)
  mesh, rules = on or shd.from_config(config, devices)
  placed = shd.placed_params(model, mesh, rules, config.seq_len)
  return SavedModel(run.directory.parent, run.step, run.model, config, model,
                    mesh, rules, placed, ckpt_lib.restore_params(run, placed))


def generate(workdir: str, prompt: str, max_new_tokens: int,
             temperature: float, top_k: int, top_p: float, seed: int) -> str:
  """Continues `prompt` with the run's model and tokenizer; returns text."""
  from iiet_jax import decode
  from iiet_jax.models import for_inference
  decode.check_sampling(temperature, top_k, top_p)   # before the model
  saved = open_model(workdir)
  tokenizer = saved.tokenizer()
  ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]
  model, params = for_inference(saved.model, saved.params)
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
