"""The commands that read a finished run: `iiet influence`, `iiet generate`.

Both rebuild the model from the run's newest checkpoint (its saved model
description and config), so they need no config file.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

from iiet_jax import checkpoint as ckpt_lib
from iiet_jax import plots
from iiet_jax.iiad import influence as inf
from iiet_jax.iiad import report
from iiet_jax.iiad import selection
from iiet_jax.train import flops


@dataclasses.dataclass
class OpenRun:
  run: ckpt_lib.SavedRun
  config: ml_collections.ConfigDict
  training: object   # iiet_jax.train.build.Training of the saved model
  params: object


def open_run(workdir: str, batch_keys=("tokens",),
             step: int | None = None) -> OpenRun:
  """A checkpoint of `workdir` (default: the newest) as a model with its
  parameters."""
  from iiet_jax.stages.distill import with_model
  from iiet_jax.train.build import build_training
  run = ckpt_lib.saved_run(workdir, step)
  config = with_model(ml_collections.ConfigDict(run.config),
                       run.model_config())
  with config.unlocked():
    config.stage = "pretrain"
  training = build_training(config, batch_keys=batch_keys)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      training.abstract_state.params, training.state_shardings.params)
  return OpenRun(run, config, training,
                 ckpt_lib.restore_params(run, abstract))


def influence(workdir: str, batches: int, ablation: bool, tau: float | None,
              budget: float | None) -> dict:
  """Measures, writes influence.json / influence.png, prints the tables and,
  given tau or a budget, the selection it implies (nothing is trained)."""
  from iiet_jax.data.loader import make_loaders
  opened = open_run(workdir)
  model = opened.training.model
  inf.check_teacher(model.config)
  loaders = make_loaders(opened.config)
  loaders.close()
  chosen = loaders.validation[:batches]
  print(f"teacher    {workdir} step {opened.run.step}: iterations "
        f"{list(model.config.iterations)}; {len(chosen)} validation batches")
  measured = inf.measure(model, opened.params, chosen, ablation=ablation,
                         progress=lambda t, k: print(
                             f"  ablation layer {t + 1} iteration {k}",
                             flush=True))
  print(report.table(measured.state_change, "influence (relative state "
                     "change, SPEC.md 5)"))
  if measured.ablation is not None:
    print(report.table(measured.ablation, "influence (loss increase when "
                       "the layer stops one iteration earlier)"))
  result = measured.to_json()
  if tau is not None or budget is not None:
    result["selection"] = select(measured.state_change, model.config,
                                 opened.config.seq_len, tau, budget)
  run_dir = opened.run.directory.parent
  out_json = report.write_json(run_dir, result)
  try:  # the measurement stands without its figure
    print(f"written    {out_json}, "
          f"{report.write_heatmap(run_dir, measured.state_change)}")
  except plots.PlotError as err:
    print(f"written    {out_json}; no influence.png: {err}")
  return result


def select(state_change, model_cfg, seq_len: int, tau, budget) -> dict:
  if budget:
    counts, tau = selection.by_budget(state_change, budget)
  else:
    counts = selection.by_threshold(state_change, tau)
  student = dataclasses.replace(model_cfg, iterations=counts)
  teacher_nfe = selection.block_evaluations(model_cfg.iterations)
  nfe = selection.block_evaluations(counts)
  cost = (flops.forward_flops_per_token(student, seq_len)
          / flops.forward_flops_per_token(model_cfg, seq_len))
  print(f"selection  tau={tau:.4g}: r_t = {list(counts)}")
  print(f"           block evaluations per token {nfe} (teacher "
        f"{teacher_nfe}); predicted decode cost {100 * cost:.1f}% of the "
        f"teacher's (analytic FLOPs per token)")
  return {"tau": tau, "iterations": list(counts), "block_evaluations": nfe,
          "teacher_block_evaluations": teacher_nfe,
          "predicted_cost_ratio": cost}


def run_tokenizer(opened: OpenRun, workdir: str):
  """The tokenizer the run trained with (its data config says which)."""
  from iiet_jax.data import sources
  tokenizer = sources.open_inputs(opened.config.data,
                                  opened.config.model.vocab_size).tokenizer
  if tokenizer is None:
    raise ValueError(f"The run in {workdir} trained on pre-tokenised "
                     f"records and has no tokenizer to read text with.")
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

