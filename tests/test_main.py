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


def test_main_trains_on_the_stdlib_corpus(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "iiet_jax.main",
       "--config=configs/lm.py:model=iiet,size=tiny",
       "--config.model.iterations=1", "--config.total_steps=6",
       "--config.optimizer.warmup_steps=2",
       f"--config.data.data_dir={tmp_path}", "--config.data.max_files=60",
       "--config.data.validation_fraction=0.2",
       "--config.data.tokenizer_sample_chars=300000"],
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = dict(line.split(None, 1) for line in out.stdout.splitlines())
  assert lines["NFE"].startswith("8 ")  # 4 layers x (1 + 1)
  assert lines["data"].startswith("python_stdlib/py")
  assert "spm_bpe_2048.model" in lines["batches"]
  first, _, last = lines["loss"].split()[:3]
  assert abs(float(first) - math.log(2048)) < 0.5
  assert float(last) < float(first) - 0.3
  assert "tok/s" in out.stdout
  val = float(lines["validation"].split()[1])
  assert float(last) - 1.0 < val < float(first)


def test_main_names_a_missing_corpus(tmp_path):
  missing = tmp_path / "no_corpus"
  out = subprocess.run(
      [sys.executable, "-m", "iiet_jax.main",
       "--config=configs/lm.py:model=iiet,size=tiny",
       "--config.data.source=files", f"--config.data.paths=('{missing}',)",
       f"--config.data.data_dir={tmp_path}"],
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert f"Data error: Corpus path {missing} does not exist" in out.stderr


def test_main_rejects_bad_override():
  out = subprocess.run(
      [sys.executable, "-m", "iiet_jax.main",
       "--config=configs/lm.py:model=iiet,size=tiny",
       "--config.model.num_heads=3"],
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert "not divisible by model.num_heads=3" in out.stderr
