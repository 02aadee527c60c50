"""One process of the preemption test:
`python preemption_worker.py ID PORT DATA WORKDIR OUT SIGNAL_AT [SIGNAL]`.

Two such processes train one run (`loop.train`, one CPU device each, gloo on
127.0.0.1). The process with ID 1 sends itself SIGNAL (default SIGTERM;
SIGINT is Ctrl-C) once step SIGNAL_AT is trained; the other gets no signal. Each writes its summary, the step it
was signalled at and the steps after which it ran an allgather (Orbax's
barriers are allgathers) to OUT.ID.json.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

process_id, port, data, workdir, out, signal_at = sys.argv[1:7]
process_id, signal_at = int(process_id), int(signal_at)
sent = getattr(signal, sys.argv[7] if len(sys.argv) > 7 else "SIGTERM")
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
os.environ.update(IIET_COORDINATOR=f"127.0.0.1:{port}", IIET_NUM_PROCESSES="2",
                  IIET_PROCESS_ID=str(process_id))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from iiet_jax.parallel import multihost  # noqa: E402

assert multihost.initialize()
assert jax.process_count() == 2

from pathlib import Path  # noqa: E402

from iiet_jax import stages  # noqa: E402
from iiet_jax.train.writers import MetricWriters  # noqa: E402
from training import run_config  # noqa: E402

allgathers = []  # the last step trained at each allgather (0: before any)
real_allgather = multihost_utils.process_allgather


def counted_allgather(*args, **kwargs):
  allgathers.append(trained[-1])
  return real_allgather(*args, **kwargs)


multihost_utils.process_allgather = counted_allgather

signalled, trained = [], [0]
write = MetricWriters.write


def write_then_signal(writer, step, metrics, prefix="train"):
  write(writer, step, metrics, prefix=prefix)
  if prefix == "train":
    trained.append(step)
    time.sleep(0.01)  # keeps the step count between signal and stop small
    if process_id == 1 and step == signal_at:
      signalled.append(step)
      os.kill(os.getpid(), sent)


MetricWriters.write = write_then_signal

cfg = run_config(Path(data), "transformer", total_steps=3000)
cfg.log_every = 1
cfg.eval_every = cfg.checkpoint.every = 100_000  # only the SIGTERM checkpoint
summary = stages.train(cfg, workdir)
with open(f"{out}.{process_id}.json", "w") as f:
  json.dump({"summary": summary, "signalled": signalled,
             "allgathers": allgathers}, f)
jax.distributed.shutdown()
