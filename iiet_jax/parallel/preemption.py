"""SIGTERM or Ctrl-C: every process checkpoints the same step, then stops.

  preemption = Preemption()      # before the first training step
  ... after every training step, in every process:
  if preemption.reached(): save this step, stop
  preemption.close()

One process: a Python SIGTERM handler sets a flag that `reached` reads. No
communication at all.

Ctrl-C (SIGINT) takes the same path: the first one asks for a save at the
next step and a stop (`reason` "Ctrl-C", which the command line turns into
its own exit code); a second one raises KeyboardInterrupt at once, which the
command line prints as one line. In a multi-process run the first Ctrl-C
sends SIGTERM to its own process, so the preemption service below tells the
others, and every process saves the same step.

Several processes: all of them must stop after the same step (its checkpoint
is one collective save), also when the scheduler signals only one of them.
JAX's preemption service does this (`multihost_utils.
reached_preemption_sync_point`, on by default, started by
`jax.distributed.initialize`). A SIGTERM handler in C++ notes the signal; a
listener thread tells the coordination service; the service's background
protocol takes the largest call number any process has reached and sets the
next one as the stopping point for all. Asking it after a step takes a lock and
compares two integers. Nothing is sent, so the loop has no per-step
collective. What it costs is latency: the listener polls once a second, so
the run stops up to about a second after the signal (for a small model,
several steps). The alternative, an allgather of a flag every N steps,
stalls the host for the whole collective each time and reacts only every N
steps.

How the service works sets three rules:
- No Python SIGTERM handler in a multi-process run. A Python handler
  replaces the C++ one, and then no notice is ever sent. So this class
  installs none there, and nothing else in iiet_jax does either.
- The service counts calls, not training steps. Each process's counter must
  go up at every call and agree across processes. The calls are therefore
  numbered per process from 1 (several runs in one process go on counting).
  A notice that arrives before the first call, during restore or
  compilation, then stops the run at the first step. Training-step numbers
  would miss it when the run resumes past step 1.
- This must be the only caller. Orbax's checkpoint manager would also ask,
  passing step numbers; iiet_jax/checkpoint.py turns those calls off.

With the service off (`jax_enable_preemption_service=False`) a SIGTERM ends
a multi-process run with no checkpoint, and the first `reached` warns about
it.
"""

from __future__ import annotations

import itertools
import logging as py_logging
import os
import signal
import threading

from absl import logging
import jax

from iiet_jax.errors import LOGGER

# Calls to JAX's preemption sync point from this process, numbered from 1.
_calls = itertools.count(1)


class Preemption:
  """Whether to checkpoint and stop after the step just trained."""

  def __init__(self):
    self.requested = False
    self.interrupted = False
    self.shared = jax.process_count() > 1
    self._previous = {}   # signal -> the handler to put back
    self._service = True
    if threading.current_thread() is not threading.main_thread():
      return  # signal handlers can only be set there; Python's defaults hold
    if not self.shared:
      self._install(signal.SIGTERM, self._handle)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
      self._install(signal.SIGINT, self._interrupt)

  def _install(self, signum, handler) -> None:
    previous = signal.getsignal(signum)
    signal.signal(signum, handler)
    # None: set outside Python; the default is the nearest we can restore.
    self._previous[signum] = signal.SIG_DFL if previous is None else previous

  @property
  def reason(self) -> str:
    """What asked for the stop: "Ctrl-C" or "SIGTERM"."""
    return "Ctrl-C" if self.interrupted else "SIGTERM"

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def _interrupt(self, signum, frame):
    del signum, frame
    if self.interrupted:
      raise KeyboardInterrupt  # the second Ctrl-C: stop now, no save
    self.interrupted = True
    py_logging.getLogger(LOGGER).warning(
        "\nCtrl-C: saving after this step, then stopping (press Ctrl-C "
        "again to stop at once, without saving)")
    if not self.shared:
      self.requested = True
    elif jax.config.jax_enable_preemption_service:
      os.kill(os.getpid(), signal.SIGTERM)   # the service tells every process
    else:   # no service: the others cannot learn of it, so no common save
      raise KeyboardInterrupt

  def reached(self) -> bool:
    """Call once after every training step, in every process. Once this is
    True, it is True in every process after the same step."""
    if not self.shared or not self._service:
      return self.requested
    from jax.experimental import multihost_utils
    try:
      self.requested = bool(
          multihost_utils.reached_preemption_sync_point(next(_calls)))
    except RuntimeError as err:  # jax_enable_preemption_service is off
      self._service = False
      logging.warning("JAX's preemption service is off (%s). A SIGTERM now "
                      "ends this run with no checkpoint; rerunning resumes "
                      "from the last periodic one.", err)
    return self.requested

  def close(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
