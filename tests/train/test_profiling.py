"""`config.profile_steps`: a jax.profiler trace of steps a..b-1 in the
run's TensorBoard folder, and the values refused before anything runs."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from iiet_jax import stages
from iiet_jax.train import profiling
from training import run_config

ROOT = Path(__file__).resolve().parents[2]


def test_trace_of_the_chosen_steps_lands_in_tensorboard(tmp_path):
  cfg = run_config(tmp_path, total_steps=4)
  cfg.profile_steps = (2, 4)
  summary = stages.train(cfg, tmp_path / "run")
  assert summary["steps"] == 4
  profile = tmp_path / "run" / "tensorboard" / "plugins" / "profile"
  xplanes = list(profile.glob("*/*.xplane.pb"))
  assert len(xplanes) == 1 and xplanes[0].stat().st_size > 0
  # The trace holds the training step (the Chrome trace written beside it).
  traces = list(profile.glob("*/*.trace.json.gz"))
  assert traces and b"train_step" in gzip.decompress(traces[0].read_bytes())


def _config(value, total_steps=10):
  return ml_collections.ConfigDict(dict(profile_steps=value,
                                        total_steps=total_steps))


@pytest.mark.parametrize("value,window", [
    ((), None), ((3, 5), (3, 5)), ([1, 2], (1, 2)), ((10, 99), (10, 99))])
def test_window_of_good_values(value, window):
  assert profiling.window(_config(value)) == window


@pytest.mark.parametrize("value,message", [
    ((0, 3), r"profile_steps=\(0, 3\): needs 0 < a < b"),
    ((4, 4), r"profile_steps=\(4, 4\): needs 0 < a < b"),
    ((5, 2), r"profile_steps=\(5, 2\): needs 0 < a < b"),
    ((-2, 3), r"profile_steps=\(-2, 3\): needs 0 < a < b"),
    ((11, 12), r"profile_steps=\(11, 12\) starts after the run's last step "
               r"\(total_steps=10\)"),
    ((3,), r"profile_steps=\(3,\): give two step numbers"),
    ((1, 2, 3), r"profile_steps=\(1, 2, 3\): give two step numbers"),
    ((1.5, 3), r"profile_steps=\(1.5, 3\): give two step numbers"),
    ("2,4", r"profile_steps='2,4': give two step numbers"),
    (5, r"profile_steps=5: give two step numbers"),
])
def test_bad_values_are_config_errors_naming_them(value, message):
  with pytest.raises(profiling.ProfileError, match=message):
    profiling.window(_config(value))


def test_bad_value_on_the_command_line_is_a_config_error(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "iiet_jax.main",
       f"--config=tests/run_config.py:{tmp_path}", f"--workdir={tmp_path}/run",
       "--config.profile_steps=(0, 2)"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0 and "Traceback" not in out.stderr
  assert ("Config error: profile_steps=(0, 2): needs 0 < a < b"
          in out.stderr)
  assert not (tmp_path / "run" / "checkpoints").exists()
