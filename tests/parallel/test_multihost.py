"""Two local processes (gloo on 127.0.0.1): one global mesh, one run."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from iiet_jax import checkpoint as ckpt_lib
from iiet_jax.train.build import build_training
from training import (ROOT, batches, read_metrics, tiny_training_config,
                      write_counting_corpus)

WORKER = Path(__file__).parents[1] / "multihost_worker.py"
PREEMPTION_WORKER = Path(__file__).parents[1] / "preemption_worker.py"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_two(worker: Path, *args: str, timeout: int = 600) -> None:
  """Runs `worker ID PORT *args` as processes 0 and 1; both must exit 0."""
  port = str(free_port())
  procs = [subprocess.Popen([sys.executable, str(worker), str(i), port,
                             *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  assert all(p.returncode == 0 for p in procs), "\n".join(
      log[-3000:] for log in logs)


def test_two_processes_match_one(tmp_path):
  out = tmp_path / "result.json"
  run_two(WORKER, str(out))
  result = json.loads(out.read_text())
  assert result["rows"] == [0, 4]  # process 0 fed only the first half

  cfg = tiny_training_config("iiet", mesh=(2, 2, 2), preset="fsdp_tp")
  training = build_training(cfg)
  state = training.init_state(0)
  losses = []
  for batch in batches(cfg, 3):
    state, metrics = training.train_step(state, batch)
    losses.append(float(metrics["loss"]))
  np.testing.assert_allclose(result["losses"], losses, rtol=1e-6)
  checksum = float(jax.jit(lambda p: sum(x.sum() for x in jax.tree.leaves(p))
                           )(state.params))
  np.testing.assert_allclose(result["checksum"], checksum, rtol=1e-6)


@pytest.mark.parametrize("sent", [
    "SIGTERM", pytest.param("SIGINT", marks=pytest.mark.slow)])
def test_a_signal_to_one_process_stops_both_at_one_step(tmp_path, sent):
  write_counting_corpus(tmp_path / "data", 128)  # once, before both read it
  out, run = tmp_path / "out", tmp_path / "run"
  run_two(PREEMPTION_WORKER, str(tmp_path / "data"), str(run), str(out), "5",
          sent, timeout=300)
  results = [json.loads(Path(f"{out}.{i}.json").read_text()) for i in (0, 1)]
  assert results[0]["signalled"] == [] and results[1]["signalled"] == [5]
  stops = [r["summary"]["steps"] for r in results]
  assert all(r["summary"]["preempted"] for r in results), stops
  # Ctrl-C in one process reaches the others as a preemption notice.
  assert [r["summary"]["stopped_by"] for r in results] == [
      "SIGTERM", "Ctrl-C" if sent == "SIGINT" else "SIGTERM"]
  assert stops[0] == stops[1] and 5 <= stops[0] < 3000, stops
  checkpoints = ckpt_lib.Checkpoints(run / "checkpoints")
  assert checkpoints.steps() == [stops[0]]
  checkpoints.close()
  _, events = read_metrics(run)
  assert [e["step"] for e in events if e["event"].startswith("SIGTERM")] == [
      stops[0]]   # process 0 writes the events
  # The stop was agreed on without a collective per step: the only
  # allgathers are Orbax's barriers, at start-up and at the save.
  for r in results:
    assert set(r["allgathers"]) <= {0, stops[0]}, r["allgathers"]
