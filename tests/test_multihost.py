"""Two local processes (gloo on 127.0.0.1) train on one global mesh."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from iiet_jax.train.build import build_training
from training import ROOT, batches, tiny_training_config

WORKER = Path(__file__).with_name("multihost_worker.py")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  out = tmp_path / "result.json"
  port = str(free_port())
  procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), port,
                             str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=600)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  assert all(p.returncode == 0 for p in procs), "\n".join(
      log[-3000:] for log in logs)
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
