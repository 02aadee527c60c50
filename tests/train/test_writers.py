"""Contracts of the metric writers: jsonl, TensorBoard, screen."""

from __future__ import annotations

import io
import json

from iiet_jax.train.writers import MetricWriters
from training import tensorboard_events


class _Tty(io.StringIO):
  def isatty(self):
    return True


def test_jsonl_and_tensorboard_hold_the_values(tmp_path):
  w = MetricWriters(str(tmp_path), 10, stream=io.StringIO())
  w.write(1, {"loss": 3.5, "grad_norm": 1.25})
  w.write(2, {"loss": 3.0}, prefix="validation")
  w.event(2, "checkpoint saved")
  w.close()
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text()
           .splitlines()]
  assert lines == [{"step": 1, "split": "train", "loss": 3.5,
                    "grad_norm": 1.25},
                   {"step": 2, "split": "validation", "loss": 3.0},
                   {"step": 2, "event": "checkpoint saved"}]
  scalars = {(v.tag, e.step): v.simple_value for e in tensorboard_events(tmp_path)
             for v in e.summary.value if v.HasField("simple_value")}
  assert scalars == {("train/loss", 1): 3.5, ("train/grad_norm", 1): 1.25,
                     ("validation/loss", 2): 3.0}
  texts = [(v.tag, e.step, v.tensor.string_val[0].decode())
           for e in tensorboard_events(tmp_path) for v in e.summary.value
           if v.HasField("tensor")]
  assert texts == [("events/text_summary", 2, "checkpoint saved")]


def test_a_resumed_run_appends(tmp_path):
  for step in (1, 2):
    w = MetricWriters(str(tmp_path), 4, stream=io.StringIO())
    w.write(step, {"loss": float(step)})
    w.close()
  steps = [json.loads(l)["step"] for l in
           (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2]


def test_plain_progress_lines_at_log_steps(tmp_path):
  out = io.StringIO()
  w = MetricWriters(str(tmp_path), 25, stream=out, log_every=10)
  for step in range(1, 26):
    w.progress(step, {"loss": 5.0 - step / 10, "tokens_per_s": 1234.0})
  w.close()
  lines = out.getvalue().splitlines()
  assert [l.split()[1] for l in lines] == ["1/25", "10/25", "20/25", "25/25"]
  assert "loss 4.9000" in lines[0] and "1,234 tok/s" in lines[0]
  assert "ETA" not in lines[0] and "ETA 0:00:00" in lines[-1]
  assert "\r" not in out.getvalue()


def test_tty_progress_redraws_one_line(tmp_path):
  out = _Tty()
  w = MetricWriters(str(tmp_path), 3, stream=out)
  for step in (1, 2):
    w.progress(step, {"loss": 1.0})
  w.event(2, "switched")
  w.progress(3, {"loss": 0.5})
  text = out.getvalue()
  assert text.count("\r") == 3 and "[step 2] switched\n" in text
  assert "\n[step 2]" in text  # The open progress line ends first.
  assert text.endswith("\n") and "3/3 100%" in text
  w.close()
  assert out.getvalue() == text  # Nothing left to end.


def test_disabled_writers_do_nothing(tmp_path):
  out = io.StringIO()
  w = MetricWriters(str(tmp_path / "w"), 5, enabled=False, stream=out)
  w.write(1, {"loss": 1.0})
  w.progress(1, {"loss": 1.0})
  w.event(1, "x")
  w.close()
  assert not (tmp_path / "w").exists() and out.getvalue() == ""
