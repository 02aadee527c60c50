"""Training stages: what is trained in which steps, around the shared loop.

`pretrain` plans a run as phases (one, or Transformer++ then IIET for the
two-stage recipe) and performs the switch between them; `distill` is IIAD's
E-IIET stage (teacher beside student). `train` plans the configured stage and
runs the plan in `train.loop`.
"""

from __future__ import annotations

from typing import Any

from etils import epath

STAGES = ("pretrain", "distill")


def plan(config) -> list:
  """The phases (`train.loop.Phase`) of a run of `config.stage`."""
  from iiet_jax.stages import distill, pretrain
  stage = config.get("stage", "pretrain")
  if stage == "distill":
    return distill.phases(config)
  if stage == "pretrain":
    return pretrain.phases(config)
  raise pretrain.PlanError(f"stage={stage!r} is unknown; choose one of "
                           f"{', '.join(STAGES)}.")


def train(config, workdir: epath.PathLike) -> dict[str, Any]:
  """Runs (or resumes) the configured run in `workdir`; returns a summary."""
  from iiet_jax.train import loop
  return loop.train(config, workdir, plan(config))
