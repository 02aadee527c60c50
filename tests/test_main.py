"""The README's main command runs end to end."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# One CPU device, as on a user's machine (conftest gives this process eight).
ENV = {**os.environ, "XLA_FLAGS": ""}


def test_main_forward_demo():
  out = subprocess.run(
      [sys.executable, "-m", "iiet_jax.main",
       "--config=configs/lm.py:model=iiet,size=tiny",
       "--config.model.iterations=1", "--config.total_steps=6",
       "--config.optimizer.warmup_steps=2"],
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = dict(line.split(None, 1) for line in out.stdout.splitlines())
  assert lines["NFE"].startswith("8 ")  # 4 layers x (1 + 1)
  first, _, last = lines["loss"].split()[:3]
  assert abs(float(first) - math.log(2048)) < 0.5
  assert float(last) < float(first) - 0.3
  assert "tok/s" in out.stdout


def test_main_rejects_bad_override():
  out = subprocess.run(
      [sys.executable, "-m", "iiet_jax.main",
       "--config=configs/lm.py:model=iiet,size=tiny",
       "--config.model.num_heads=3"],
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert "not divisible by model.num_heads=3" in out.stderr
