"""The reproduction experiment (docs/reproduction.md): one config per system.

  --config=configs/reproduce.py:size=tiny,system=iiet [--config.seed=1]

Every system is configs/lm.py's config for `size` with the overrides below:
the same data (stdlib corpus at tiny, whatever `data.*` says elsewhere), the
same order for a given seed, tokens, optimizer and schedule; only the
architecture differs (and, for the equal-FLOPs control, the step count).
`python bench/reproduce.py` runs every system and seed in sequence on one
machine; on a cluster, sweep the seeds of one system per job:

  iiet sweep --config=configs/reproduce.py:size=340m,system=iiet \
      --workdir=gs://bucket/reproduce/iiet [--sweep_dry_run]

E-IIET (`system=eiiet`) is the IIAD stage: it needs
`--config.distill.teacher=` (the IIET run, system `iiet`, seed 0) and a
`--config.distill.tau=`; bench/reproduce.py passes both.
"""

from __future__ import annotations

import os

import ml_collections

from iiet_jax import overrides

# name -> (overrides of configs/lm.py, seeds run by bench/reproduce.py).
# Seed s of every system trains on data order s from init s, so systems are
# compared paired by seed. The main systems have 5 seeds (the paired 95%
# intervals of docs/reproduction.md); controls and ablations fewer.
SYSTEMS = {
    "transformer": ({"model.arch": "transformer", "switch_at": 0.0}, 5),
    "pcformer": ({"model.arch": "pcformer", "switch_at": 0.0}, 5),
    "iiet": ({"model.arch": "iiet", "switch_at": 0.0}, 5),
    # IIET from scratch with the start chosen in docs/plateau.md (bench/
    # plateau.py, on data orders that are not these seeds).
    "iiet_robust": ({"model.arch": "iiet", "switch_at": 0.0,
                     "history_init": "inherit"}, 5),
    # Transformer++ for 75% of the steps, then IIET (the default switch).
    "two_stage": ({"model.arch": "iiet", "switch_at": 0.75}, 5),
    # The same with SPEC.md's history init at the switch (the old default).
    "two_stage_spec_init": ({"model.arch": "iiet", "switch_at": 0.75,
                             "switch.history_init": "average",
                             "switch.norm_init": "unit"}, 1),
    # Controls: Transformer++ for IIET's training FLOPs (steps set from
    # train/flops.py below) and with one untied layer per IIET block
    # evaluation.
    "transformer_equal_flops": ({"model.arch": "transformer",
                                 "switch_at": 0.0}, 1),
    "transformer_deep": ({"model.arch": "transformer", "switch_at": 0.0}, 1),
    # Iteration ablation (r = 3 is system `iiet`).
    "iiet_r1": ({"model.arch": "iiet", "switch_at": 0.0,
                 "model.iterations": 1}, 1),
    "iiet_r2": ({"model.arch": "iiet", "switch_at": 0.0,
                 "model.iterations": 2}, 1),
    "iiet_r4": ({"model.arch": "iiet", "switch_at": 0.0,
                 "model.iterations": 4}, 1),
    "iiet_r8": ({"model.arch": "iiet", "switch_at": 0.0,
                 "model.iterations": 8}, 1),
    # IIAD from system `iiet` (seed 0): E-IIET at a threshold tau.
    "eiiet": ({"model.arch": "iiet", "switch_at": 0.0, "stage": "distill"},
              1),
}
# The held-out set at tiny: 5% of the stdlib files (81 documents), the
# first 1,024 tokens of each (65k tokens, none over 2% of them), read whole
# at every validation pass; bench/choice_task.py draws its items from the
# same documents.
TINY_HELD_OUT = {"data.validation_fraction": 0.05,
                 "data.eval_doc_tokens": 1024, "data.eval_batches": 100}
DEFAULT_ARG = "size=tiny,system=iiet"
SIZES = ("tiny", "55m", "340m")
DISTILL_STEPS = {"tiny": 150, "55m": 2000, "340m": 3000}


LM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lm.py")


def parse_arg(arg: str | None) -> dict[str, str]:
  return overrides.parse_arg(
      arg, {"size": "tiny", "system": "iiet"}, "configs/reproduce.py",
      "size=SIZE,system=NAME", {"size": SIZES, "system": tuple(SYSTEMS)})


def equal_flops_steps(config) -> int:
  """Transformer++ steps with the training FLOPs of IIET (r = 3)."""
  from iiet_jax.models.config import ModelConfig
  from iiet_jax.train import flops
  model = dict(config.model.to_dict())
  iiet = ModelConfig.from_dict({**model, "arch": "iiet"})
  plain = ModelConfig.from_dict({**model, "arch": "transformer"})
  ratio = (flops.train_flops_per_token(iiet, config.seq_len)
           / flops.train_flops_per_token(plain, config.seq_len))
  return round(config.total_steps * ratio)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  values = parse_arg(arg)
  size, system = values["size"], values["system"]
  changes = dict(SYSTEMS[system][0])
  if size == "tiny":
    # Checkpoints at the switch step (450) and every quarter, so a killed
    # run loses at most 150 steps and the two-stage runs can start from
    # the Transformer++ run's step 450.
    every = 150 if system != "eiiet" else 50
    changes.update({"checkpoint.every": every, "eval_every": every,
                    "log_every": 5, **TINY_HELD_OUT})
  config = overrides.load(f"{LM}:model=iiet,size={size}", changes)
  if system == "transformer_equal_flops":
    config.total_steps = equal_flops_steps(config)
  if system == "transformer_deep":
    evaluations = config.model.num_layers * (1 + config.model.iterations)
    config.model.num_layers = evaluations
  if system == "eiiet":
    config.total_steps = DISTILL_STEPS[size]
    config.optimizer.warmup_steps = 10 if size == "tiny" else 100
  config.variant = f"size={size},system={system}"
  return config


def get_sweep(arg: str | None = None) -> list[dict]:
  """`iiet sweep`: the seeds of one system."""
  _, seeds = SYSTEMS[parse_arg(arg)["system"]]
  return [{"seed": s} for s in range(max(seeds, 5))]
