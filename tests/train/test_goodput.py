"""Goodput (train/goodput.py) and the persistent compilation cache
(train/compile_cache.py): where a run's time goes, over restarts, and
compiled steps kept for the next process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import pytest

from iiet_jax import stages
from iiet_jax.train import compile_cache
from iiet_jax.train import goodput as goodput_lib
from training import ROOT, run_config, stop_after


def _ledger(workdir, last_step, step_seconds, **total):
  seconds = dict.fromkeys(goodput_lib.CATEGORIES, 0.0)
  seconds.update(total)
  (workdir / goodput_lib.FILE).write_text(json.dumps({
      "attempts": 1, "last_step": last_step, "step_seconds": step_seconds,
      "total": seconds}))


def test_steps_past_the_restored_checkpoint_count_as_lost(tmp_path):
  # The attempt before reached step 10 at 0.5 s a step, and its newest
  # checkpoint is step 6: 4 steps (2 s) of its training are done again.
  _ledger(tmp_path, 10, 0.5, startup=3.0, compile=4.0, train=5.0)
  ledger = goodput_lib.Goodput(tmp_path, primary=True)
  ledger.resumed(6)
  ledger.training_starts()
  ledger.add("train", 1.0)
  total = ledger.total()
  assert total["lost"] == pytest.approx(2.0)
  assert total["train"] == pytest.approx(5.0 - 2.0 + 1.0)
  assert total["compile"] == pytest.approx(4.0)
  summary = ledger.summary()
  assert summary["attempts"] == 2
  assert summary["goodput"] == pytest.approx(
      total["train"] / sum(total.values()))
  # A resume at the step the attempt before reached loses nothing.
  again = goodput_lib.Goodput(tmp_path, primary=True)
  again.resumed(10)
  assert again.total()["lost"] == 0.0


def test_a_ledger_cut_short_by_a_kill_starts_afresh(tmp_path):
  (tmp_path / goodput_lib.FILE).write_text('{"attempts": 1, "last_')
  ledger = goodput_lib.Goodput(tmp_path, primary=True)
  ledger.resumed(4)
  assert ledger.summary()["attempts"] == 1
  assert ledger.total()["lost"] == 0.0


def test_a_stopped_and_resumed_run_reports_goodput_of_both(tmp_path):
  config = run_config(tmp_path / "data", "transformer", total_steps=6)
  config.compile_cache_dir = ""
  with stop_after(3):
    first = stages.train(config, tmp_path / "run")
  assert first["preempted"]
  g = first["goodput"]
  assert g["attempts"] == 1 and 0 < g["goodput"] < 1
  assert g["seconds"]["compile"] > 0 and g["seconds"]["train"] > 0
  done = stages.train(config, tmp_path / "run")
  g2 = done["goodput"]
  assert g2["attempts"] == 2
  # SIGTERM saved the step it stopped at: nothing to redo.
  assert g2["seconds"]["lost"] == 0.0
  # Three values rounded to 1 ms each.
  assert g2["seconds"]["train"] == pytest.approx(
      g["seconds"]["train"] + g2["run_seconds"]["train"], abs=2e-3)
  rows = [json.loads(line) for line in
          (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  shares = [r["goodput"] for r in rows if r.get("split") == "train"]
  assert len(shares) == 6 and all(0 <= g <= 1 for g in shares)
  assert shares[0] == 0.0 and shares[-1] > 0   # step 1 only compiles


@pytest.mark.slow
def test_a_killed_run_counts_the_steps_it_redoes_as_lost(tmp_path):
  # SIGKILL after step 5 (checkpoints every 2: step 4 is the newest), then
  # the same command: step 5 is trained twice.
  args = [sys.executable, "-m", "iiet_jax.main",
          f"--config=tests/run_config.py:{tmp_path / 'data'},transformer",
          f"--workdir={tmp_path / 'run'}", "--config.total_steps=8",
          "--config.compile_cache_dir="]
  process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL,
                             start_new_session=True)
  ledger = tmp_path / "run" / goodput_lib.FILE
  deadline = time.monotonic() + 300
  while True:
    assert process.poll() is None and time.monotonic() < deadline
    try:
      if json.loads(ledger.read_text())["last_step"] >= 5:
        break
    except (FileNotFoundError, json.JSONDecodeError):
      pass
    time.sleep(0.01)
  os.killpg(process.pid, signal.SIGKILL)
  process.wait()
  reached = json.loads(ledger.read_text())["last_step"]
  done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  g = summary["goodput"]
  assert g["attempts"] == 2
  assert reached >= 5
  assert g["seconds"]["lost"] > 0
  assert "goodput" in done.stdout and "over 2 attempts" in done.stdout


def test_the_cache_folder_is_shared_per_host_or_bucket(tmp_path):
  auto = {"compile_cache_dir": "auto"}
  assert compile_cache.directory(auto, tmp_path / "run") == \
      os.path.expanduser(compile_cache.DEFAULT)
  assert compile_cache.directory(auto, "gs://bkt/runs/a") == \
      "gs://bkt/iiet_jax/compile_cache"
  assert compile_cache.directory({"compile_cache_dir": ""}, "x") is None
  assert compile_cache.directory({"compile_cache_dir": "gs://c/d"}, "x") == \
      "gs://c/d"


def test_a_run_writes_its_compiled_steps_to_the_cache(tmp_path):
  config = run_config(tmp_path / "data", "transformer", total_steps=2)
  config.compile_cache_dir = str(tmp_path / "cache")
  try:
    stages.train(config, tmp_path / "run")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
    entries = os.listdir(tmp_path / "cache")
    assert any(e.startswith("jit_train_step") for e in entries), entries
  finally:
    compile_cache.enable({"compile_cache_dir": ""}, tmp_path)
  assert jax.config.jax_compilation_cache_dir is None
