"""Figures: `iiet plot` on runs' metrics.jsonl, its bad inputs, the
influence heatmap, and the message when matplotlib is missing."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from iiet_jax import plots
from iiet_jax.iiad import report
from iiet_jax.train.writers import MetricWriters

ROOT = Path(__file__).resolve().parents[2]
MAIN = [sys.executable, "-m", "iiet_jax.main"]
CURVES_HWC = (420, 1100, 4)  # plots.training_curves: 11 x 4.2 in at 100 dpi


def _run(args):
  return subprocess.run(MAIN + args, cwd=ROOT, capture_output=True,
                        text=True, timeout=120)


def _fake_run(workdir: Path, offset: float, switch_at: int | None = None):
  """metrics.jsonl as a run writes it: train rows every 5 steps, validation
  every 20, events, and a resume that rewrites steps 15-20."""
  writers = MetricWriters(str(workdir), 40, stream=io.StringIO())
  for step in [*range(5, 25, 5), *range(15, 45, 5)]:
    writers.write(step, {"loss": 6 - math.log(step) + offset,
                         "tokens_per_s": 1e4})
    if step % 20 == 0:
      writers.write(step, {"loss": 5.5 - math.log(step) + offset,
                           "perplexity": 100.0, "tokens": 512.0},
                    prefix="validation")
    if step == switch_at:
      writers.event(step, f"switched to iiet at step {step}: 11 parameter "
                    f"tensors carried, 6 new")
  writers.close()


def test_plot_draws_two_runs_into_one_png(tmp_path):
  _fake_run(tmp_path / "transformer", 0.0)
  _fake_run(tmp_path / "two_stage", 0.2, switch_at=30)
  curves = plots.read_curves(tmp_path / "two_stage")
  assert curves["train"][0] == [5, 10, 15, 20, 25, 30, 35, 40]
  assert curves["validation"][0] == [20, 40] and curves["switches"] == [30]

  out = _run(["plot", f"--workdir={tmp_path / 'transformer'}",
              str(tmp_path / "two_stage")])
  assert out.returncode == 0, out.stderr[-3000:]
  png = tmp_path / "transformer" / "curves.png"  # next to the first run
  assert f"-> {png}" in out.stdout
  assert image.imread(png).shape == CURVES_HWC

  chosen = tmp_path / "figures" / "both.png"
  out = _run(["plot", f"--workdir={tmp_path / 'two_stage'}",
              str(tmp_path / "transformer"), f"--out={chosen}"])
  assert out.returncode == 0, out.stderr[-3000:]
  assert image.imread(chosen).shape == CURVES_HWC


def _fails_naming(args, path):
  out = _run(args)
  assert out.returncode != 0
  assert "Traceback" not in out.stderr
  message = out.stderr.strip()
  assert "\n" not in message and message.startswith("plot error: ")
  assert str(path) in message
  return message


def test_plot_refuses_bad_runs_naming_the_path(tmp_path):
  _fake_run(tmp_path / "good", 0.0)
  missing = tmp_path / "missing"
  assert "no such run directory" in _fails_naming(
      ["plot", f"--workdir={tmp_path / 'good'}", str(missing)], missing)

  (tmp_path / "empty").mkdir()
  assert "no such file" in _fails_naming(
      ["plot", f"--workdir={tmp_path / 'empty'}"],
      tmp_path / "empty" / "metrics.jsonl")

  events = tmp_path / "events" / "metrics.jsonl"
  events.parent.mkdir()
  events.write_text('{"step": 0, "event": "warm start"}\n'
                    '{"step": 4, "split": "train", "loss": NaN}\n'
                    '{"step": 5, "split": "train", "loss": "high"}\n'
                    '{"step": 6, "split": "trai')  # cut short by a crash
  assert "no train or validation rows with a numeric loss" in _fails_naming(
      ["plot", f"--workdir={events.parent}"], events)
  assert not (tmp_path / "good" / "curves.png").exists()


def test_influence_heatmap_is_a_png_of_its_grid():
  values_LR = np.array([[0.05, 0.004, 0.0007], [0.006, 0.0, np.nan]])
  png = image.imread(io.BytesIO(report.heatmap(values_LR)))
  assert png.shape == (220, 510, 4)  # 2.4 + 0.9 R by 1.4 + 0.4 L inches


def test_missing_matplotlib_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
  with pytest.raises(plots.PlotError, match=r"pip install -e '\.\[plot\]'"):
    plots.pyplot()
  with pytest.raises(plots.PlotError, match="matplotlib"):
    report.heatmap(np.zeros((2, 2)))
