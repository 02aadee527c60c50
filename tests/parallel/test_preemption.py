"""parallel/preemption.py in one process (the two-process run: test_multihost)."""

from __future__ import annotations

import os
import signal

import jax
from jax.experimental import multihost_utils
import numpy as np

from iiet_jax.parallel import preemption as preemption_lib


def _no_communication(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("communication in a one-process run")
  for name in ("process_allgather", "sync_global_devices",
               "broadcast_one_to_all", "reached_preemption_sync_point"):
    monkeypatch.setattr(multihost_utils, name, refuse)


def test_one_process_reads_its_own_flag_only(monkeypatch):
  _no_communication(monkeypatch)
  before = signal.getsignal(signal.SIGTERM)
  preemption = preemption_lib.Preemption()
  try:
    assert not any(preemption.reached() for _ in range(100))
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.reached() and preemption.reached()
  finally:
    preemption.close()
  assert signal.getsignal(signal.SIGTERM) is before


def test_several_processes_ask_the_service_with_numbered_calls(monkeypatch):
  asked = []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point",
                      lambda n: asked.append(n) or len(asked) == 4)
  monkeypatch.setattr(multihost_utils, "process_allgather", None)
  before = signal.getsignal(signal.SIGTERM)
  preemption = preemption_lib.Preemption()
  # No Python handler: it would replace the service's own SIGTERM handler.
  assert signal.getsignal(signal.SIGTERM) is before
  assert [preemption.reached() for _ in range(4)] == [False] * 3 + [True]
  preemption.close()
  # One call per step, numbered 1, 2, ... per process (never step numbers).
  assert asked == list(range(asked[0], asked[0] + 4))
  assert asked[0] >= 1
  again = preemption_lib.Preemption()
  again.reached()
  again.close()
  assert asked[-1] == asked[-2] + 1  # a second run in this process counts on


def test_service_off_warns_once_and_never_stops(monkeypatch):
  calls = []

  def off(n):
    calls.append(n)
    raise RuntimeError("Preemption sync manager has not been initialized.")
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", off)
  warnings = []
  monkeypatch.setattr(preemption_lib.logging, "warning",
                      lambda *a: warnings.append(a))
  preemption = preemption_lib.Preemption()
  assert not any(preemption.reached() for _ in range(5))
  assert len(calls) == 1 and len(warnings) == 1
  preemption.close()


def test_checkpoint_saves_leave_the_service_alone(tmp_path, monkeypatch):
  """Orbax would ask the service at each save, with the step number."""
  from iiet_jax import checkpoint as ckpt_lib

  def asked(n):
    raise AssertionError(f"asked the preemption service with {n}")
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", asked)
  ckpt_lib.save_params(tmp_path / "checkpoints", 7,
                       {"w": np.zeros(3, np.float32)}, {}, {"phase": "x"})
  checkpoints = ckpt_lib.Checkpoints(tmp_path / "checkpoints")
  assert checkpoints.steps() == [7]
  checkpoints.close()
