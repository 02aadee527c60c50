"""Influence of a trained IIET run's iterations, and the E-IIET selection it
implies (`iiet influence`; `iiet distill --dry_run`). Nothing is trained."""

from __future__ import annotations

import dataclasses
from typing import Callable

from iiet_jax import plots
from iiet_jax import runs
from iiet_jax.iiad import influence as inf
from iiet_jax.iiad import report
from iiet_jax.iiad import selection
from iiet_jax.train import flops


@dataclasses.dataclass
class Measured:
  step: int
  iterations: list[int]
  batches: int
  influence: inf.Influence
  result: dict               # what influence.json holds
  written: list[str]         # the files written
  figure_error: str | None   # why influence.png is missing, if it is


def measure_run(workdir: str, batches: int, ablation: bool,
                tau: float | None, budget: float | None,
                progress: Callable[[int, int], None] | None = None
                ) -> Measured:
  """Measures, writes influence.json / influence.png and, given tau or a
  budget, adds the selection it implies."""
  from iiet_jax.data.loader import make_loaders
  selection.check(tau, budget)  # before the run is opened or measured
  if batches < 1:
    raise inf.InfluenceError(f"--batches={batches} must be >= 1: the "
                             f"validation batches the influence is "
                             f"measured on.")
  saved = runs.open_model(workdir)
  model = saved.model
  inf.check_teacher(model.config)
  loaders = make_loaders(saved.config)
  loaders.close()
  chosen = loaders.validation[:batches]
  measured = inf.measure(model, saved.params, chosen, ablation=ablation,
                         progress=progress)
  result = measured.to_json()
  if tau is not None or budget is not None:
    result["selection"] = select(measured.state_change, model.config,
                                 saved.config.seq_len, tau, budget)
  run_dir = saved.workdir
  written = [str(report.write_json(run_dir, result))]
  figure_error = None
  try:  # the measurement stands without its figure
    written.append(str(report.write_heatmap(run_dir, measured.state_change)))
  except plots.PlotError as err:
    figure_error = str(err)
  return Measured(saved.step, list(model.config.iterations),
                  len(chosen), measured, result, written, figure_error)


def select(state_change, model_cfg, seq_len: int, tau, budget) -> dict:
  """The per-layer counts r_t kept at threshold `tau` (or `budget`), with
  their block evaluations and predicted decode cost."""
  if budget:
    counts, tau = selection.by_budget(state_change, budget)
  else:
    counts = selection.by_threshold(state_change, tau)
  student = dataclasses.replace(model_cfg, iterations=counts)
  cost = (flops.forward_flops_per_token(student, seq_len)
          / flops.forward_flops_per_token(model_cfg, seq_len))
  return {"tau": tau, "iterations": list(counts),
          "block_evaluations": selection.block_evaluations(student),
          "teacher_block_evaluations": selection.block_evaluations(model_cfg),
          "predicted_cost_ratio": cost}
