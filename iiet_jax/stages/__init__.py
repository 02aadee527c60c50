"""Training stages: what is trained in which steps, around the shared loop.

`pretrain` plans a run as phases (one, or Transformer++ then IIET for the
two-stage recipe) and performs the switch between them; `distill` is IIAD's
E-IIET stage (teacher beside student); `merge` carries a loaded tree into a
fresh one for switches and warm starts.
"""

STAGES = ("pretrain", "distill")


def plan(config) -> list:
  """The phases of a run of `config.stage`."""
  from iiet_jax.stages import distill, pretrain
  stage = config.get("stage", "pretrain")
  if stage == "distill":
    return distill.phases(config)
  if stage == "pretrain":
    return pretrain.phases(config)
  raise pretrain.PlanError(f"stage={stage!r} is unknown; choose one of "
                           f"{', '.join(STAGES)}.")
