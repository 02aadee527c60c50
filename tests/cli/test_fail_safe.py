"""Fail safe: a diverged run stops before it saves, Ctrl-C saves, one writer
per workdir, a run cannot be shortened, and each stop has its exit code
(errors.Exit, docs/errors.md).

The whole-run cases run `iiet train` in a subprocess on the counting corpus
of tests/run_config.py (a two-layer Transformer++, 8 steps, checkpoints
every 2, a log line every step).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from iiet_jax import lock
from iiet_jax.errors import Exit
from training import read_metrics

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0",
       "IIET_HUGE_PAGES": "0"}
MAIN = [sys.executable, "-m", "iiet_jax.main"]


def _args(tmp_path, workdir, *extra):
  return [f"--config=tests/run_config.py:{tmp_path / 'data'},transformer",
          f"--workdir={workdir}", *extra]


def _run(args, timeout=300):
  return subprocess.run(MAIN + args, cwd=ROOT, env=ENV, capture_output=True,
                        text=True, timeout=timeout)


def _signal_at(args, workdir: Path, step: int, signals):
  """Starts `iiet train`, sends `signals` (0.3 s apart) once `step` is in
  metrics.jsonl; returns (exit code, stderr)."""
  proc = subprocess.Popen(MAIN + args, cwd=ROOT, env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if (workdir / "metrics.jsonl").exists() and \
        step in read_metrics(workdir)[0]:
      for i, sig in enumerate(signals):
        if i:
          time.sleep(0.3)
        proc.send_signal(sig)
      break
    time.sleep(0.02)
  _, err = proc.communicate(timeout=240)
  return proc.returncode, err


def _finite_checkpoints(workdir: Path) -> list[int]:
  """The saved steps, each checked to hold only finite parameters."""
  from iiet_jax import runs
  from iiet_jax.checkpoint import saved_steps
  steps = saved_steps(workdir / "checkpoints")
  saved = runs.open_model(str(workdir))
  for step in steps:
    for leaf in jax.tree.leaves(saved.params_at(step)):
      assert np.isfinite(np.asarray(leaf, np.float32)).all(), step
  return steps


def test_a_diverged_run_stops_before_it_saves(tmp_path):
  workdir = tmp_path / "run"
  out = _run(_args(tmp_path, workdir, "--config.optimizer.peak_lr=1e6"))
  assert out.returncode == Exit.DIVERGED, out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("Diverged error: training diverged"), last
  assert "optimizer.peak_lr (now 1e+06)" in last
  steps = _finite_checkpoints(workdir)
  assert steps and f"newest checkpoint, step {steps[-1]}" in last
  # Nothing was saved after the first non-finite step.
  first_bad = int(last.split("finite at step ")[1].split(",")[0])
  assert steps[-1] < first_bad
  _, events = read_metrics(workdir)
  assert any(e["event"].startswith("training diverged") for e in events)


@pytest.mark.slow
def test_skip_drops_non_finite_updates_then_stops(tmp_path):
  workdir = tmp_path / "run"
  out = _run(_args(tmp_path, workdir, "--config.optimizer.peak_lr=1e6",
                   "--config.nonfinite=skip",
                   "--config.nonfinite_max_skips=2"))
  assert out.returncode == Exit.DIVERGED, out.stderr[-3000:]
  assert "2 dropped in a row" in out.stderr
  _finite_checkpoints(workdir)
  rows = [json.loads(line) for line in
          (workdir / "metrics.jsonl").read_text().splitlines()]
  skipped = [r["skipped_steps"] for r in rows if "skipped_steps" in r]
  assert skipped and max(skipped) >= 2


def test_ctrl_c_saves_the_next_step_and_resumes(tmp_path):
  workdir = tmp_path / "run"
  code, err = _signal_at(_args(tmp_path, workdir), workdir, 3,
                         [signal.SIGINT])
  assert code == Exit.INTERRUPTED, err[-3000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  _, events = read_metrics(workdir)
  stops = [e["step"] for e in events if e["event"].startswith("Ctrl-C")]
  assert len(stops) == 1
  assert (workdir / "checkpoints" / str(stops[0])).is_dir()
  assert not (workdir / lock.NAME).exists()   # released on the way out
  again = _run(_args(tmp_path, workdir))
  assert again.returncode == Exit.FINISHED, again.stderr[-3000:]
  assert f"resumed from step {stops[0]}" in again.stdout


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_without_a_traceback(tmp_path):
  workdir = tmp_path / "run"
  code, err = _signal_at(_args(tmp_path, workdir), workdir, 2,
                         [signal.SIGINT, signal.SIGINT])
  assert code == Exit.INTERRUPTED, err[-3000:]
  assert "Traceback" not in err
  assert err.strip().splitlines()[-1].startswith("Interrupted: stopped at "
                                                 "once"), err[-2000:]


@pytest.mark.slow
def test_sigterm_exits_with_the_preempted_code(tmp_path):
  workdir = tmp_path / "run"
  code, err = _signal_at(_args(tmp_path, workdir), workdir, 3,
                         [signal.SIGTERM])
  assert code == Exit.PREEMPTED, err[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["preempted"] and summary["stopped_by"] == "SIGTERM"


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_is_refused(tmp_path):
  workdir = tmp_path / "run"
  first = subprocess.Popen(MAIN + _args(tmp_path, workdir,
                                        "--config.total_steps=400"),
                           cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and not (workdir / "metrics.jsonl").exists():
      time.sleep(0.1)
    second = _run(_args(tmp_path, workdir, "--config.total_steps=400"))
  finally:
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=240)
  assert second.returncode == Exit.BAD_INPUT, second.stderr[-3000:]
  last = second.stderr.strip().splitlines()[-1]
  assert last.startswith("Workdir error:") and f"pid {first.pid}" in last
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  steps = [json.loads(x)["step"] for x in lines if '"split": "train"' in x]
  assert len(steps) == len(set(steps))   # one writer: no line twice


def test_a_finished_run_cannot_be_shortened(tmp_path):
  workdir = tmp_path / "run"
  (workdir / "checkpoints" / "8").mkdir(parents=True)
  before = sorted(p.name for p in workdir.rglob("*"))
  out = _run(_args(tmp_path, workdir, "--config.total_steps=4",
                   "--config.optimizer.warmup_steps=1"), timeout=120)
  assert out.returncode == Exit.BAD_INPUT
  assert "saved at step 8, past total_steps=4" in out.stderr
  assert "--config.total_steps=8 or more" in out.stderr
  assert sorted(p.name for p in workdir.rglob("*")) == before


# The lock, in this process.

@pytest.fixture
def fast_lock(monkeypatch):
  monkeypatch.setattr(lock, "STALE", 1.0)
  monkeypatch.setattr(lock, "HEARTBEAT", 0.2)


def _owner(path: Path, **fields):
  base = dict(host=socket.gethostname(), pid=os.getpid(), start_time=None,
              command="train", token="theirs", heartbeat=time.time())
  (path / lock.NAME).write_text(json.dumps({**base, **fields}))


def test_a_live_owner_on_this_host_is_refused_by_name(tmp_path, fast_lock):
  sleeper = subprocess.Popen(["sleep", "30"])
  try:
    _owner(tmp_path, pid=sleeper.pid)
    with pytest.raises(lock.LockError, match=rf"pid {sleeper.pid} on host "
                       rf"{socket.gethostname()}"):
      with lock.held(tmp_path, "train"):
        pass
  finally:
    sleeper.kill()
    sleeper.wait()
  assert json.loads((tmp_path / lock.NAME).read_text())["token"] == "theirs"


def test_a_dead_owner_is_taken_over_and_released(tmp_path, fast_lock):
  gone = subprocess.Popen(["true"])
  gone.wait()
  _owner(tmp_path, pid=gone.pid)
  with lock.held(tmp_path, "distill"):
    mine = json.loads((tmp_path / lock.NAME).read_text())
    assert mine["pid"] == os.getpid() and mine["command"] == "distill"
  assert not (tmp_path / lock.NAME).exists()


def test_a_reused_pid_counts_as_gone(tmp_path, fast_lock):
  live = subprocess.Popen(["sleep", "30"])
  try:
    _owner(tmp_path, pid=live.pid, start_time="1")   # started long before
    with lock.held(tmp_path, "train"):
      pass
  finally:
    live.kill()
    live.wait()


def test_another_host_waits_for_a_stale_heartbeat(tmp_path, fast_lock):
  _owner(tmp_path, host="old-machine", heartbeat=time.time() - 60)
  with lock.held(tmp_path, "train"):   # stale: taken over at once
    pass
  _owner(tmp_path, host="old-machine")   # fresh: waits, then takes it
  started = time.time()
  with lock.held(tmp_path, "train"):
    waited = time.time() - started
  assert 0.9 <= waited < 10


def test_a_live_owner_elsewhere_is_refused_after_the_wait(tmp_path,
                                                          fast_lock):
  _owner(tmp_path, host="busy-machine")
  stop = threading.Event()

  def beat():   # the owner's heartbeat keeps coming
    while not stop.wait(0.1):
      _owner(tmp_path, host="busy-machine")

  beater = threading.Thread(target=beat)
  beater.start()
  try:
    with pytest.raises(lock.LockError, match="host busy-machine"):
      with lock.held(tmp_path, "train"):
        pass
  finally:
    stop.set()
    beater.join()


def test_the_heartbeat_renews_the_lock(tmp_path, fast_lock):
  with lock.held(tmp_path, "train"):
    first = json.loads((tmp_path / lock.NAME).read_text())["heartbeat"]
    time.sleep(0.7)
    later = json.loads((tmp_path / lock.NAME).read_text())["heartbeat"]
  assert later > first


def test_processes_of_one_run_follow_process_0(tmp_path, fast_lock):
  _owner(tmp_path, host="busy-machine", heartbeat=time.time() + 3600)
  # Not process 0: takes nothing, but stops when process 0 could not.
  with pytest.raises(lock.LockError, match="process 0 of this run"):
    with lock.held(tmp_path, "train", primary=False,
                   primary_says=lambda ok: False):
      pass
  with lock.held(tmp_path, "train", primary=False,
                 primary_says=lambda ok: True):
    pass
  assert json.loads((tmp_path / lock.NAME).read_text())["token"] == "theirs"


@pytest.mark.slow
def test_a_refused_resume_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  first = _run(_args(tmp_path, workdir, "--config.total_steps=2"))
  assert first.returncode == Exit.FINISHED, first.stderr[-3000:]
  before = {p: p.stat().st_size for p in workdir.rglob("*") if p.is_file()
            and p.name != "iiet.log"}
  other = _run(_args(tmp_path, workdir, "--config.total_steps=4",
                     "--config.model.num_layers=3"))
  assert other.returncode == Exit.BAD_INPUT, other.stderr[-3000:]
  assert other.stderr.strip().splitlines()[-1].startswith("Checkpoint error")
  after = {p: p.stat().st_size for p in workdir.rglob("*") if p.is_file()
           and p.name != "iiet.log"}
  assert after == before   # no new TensorBoard file, no metrics line
  assert not (workdir / lock.NAME).exists()


def test_an_owner_that_lost_its_lock_knows(tmp_path, fast_lock):
  with lock.held(tmp_path, "train") as mine:
    assert not mine.lost
    _owner(tmp_path, host="new-machine")   # taken over while stalled
    time.sleep(0.7)
    assert mine.lost
  # Its release leaves the new owner's lock in place.
  assert json.loads((tmp_path / lock.NAME).read_text())["host"] == \
      "new-machine"


def test_a_half_written_lock_counts_as_live_until_stale(tmp_path, fast_lock):
  (tmp_path / lock.NAME).write_text("{")   # a remote writer died mid-write
  started = time.time()
  with lock.held(tmp_path, "train"):
    assert time.time() - started >= 0.9   # waited for it to go stale
