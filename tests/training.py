"""Small training configs shared by the sharding, step and multi-host tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_lm_config(arg: str):
  spec = importlib.util.spec_from_file_location("lm_config",
                                                ROOT / "configs" / "lm.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def tiny_training_config(arch: str = "iiet", mesh=(1, 1, 1),
                         preset: str = "dp", **model):
  cfg = load_lm_config(f"model={arch},size=tiny")
  cfg.model.update(dict(num_layers=2, d_model=32, num_heads=4, d_ff=64,
                        vocab_size=128, iterations=2))
  cfg.model.update(model)
  cfg.batch_size, cfg.seq_len = 8, 16
  cfg.total_steps = 10
  cfg.optimizer.warmup_steps = 1
  cfg.optimizer.peak_lr = 1e-2      # large enough that steps move parameters
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh
  cfg.sharding.preset = preset
  return cfg


def batches(cfg, steps: int, seed: int = 0, masked: bool = False):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(steps):
    b = {"tokens": rng.integers(0, cfg.model.vocab_size,
                                (cfg.batch_size, cfg.seq_len)).astype(np.int32)}
    if masked:
      b["mask"] = (rng.random((cfg.batch_size, cfg.seq_len)) < 0.7
                   ).astype(np.int32)
    out.append(b)
  return out
