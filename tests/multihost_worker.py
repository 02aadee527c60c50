"""One process of the multi-process test: `python multihost_worker.py ID PORT OUT`.

Runs with 4 fake CPU devices; two such processes form one 8-device mesh over
gloo collectives on 127.0.0.1. Each feeds only its rows of every batch.
"""

from __future__ import annotations

import json
import os
import sys

process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ.update(IIET_COORDINATOR=f"127.0.0.1:{port}", IIET_NUM_PROCESSES="2",
                  IIET_PROCESS_ID=str(process_id))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

from iiet_jax.parallel import multihost  # noqa: E402

assert multihost.initialize()
assert jax.process_count() == 2 and jax.device_count() == 8

from iiet_jax.train.build import build_training  # noqa: E402
from iiet_jax.train.step import batch_shardings  # noqa: E402
from training import batches, tiny_training_config  # noqa: E402

cfg = tiny_training_config("iiet", mesh=(2, 2, 2), preset="fsdp_tp")
training = build_training(cfg)
state = training.init_state(0)
rows = multihost.process_rows(cfg.batch_size)
shardings = batch_shardings(("tokens",), training.mesh, training.rules)
losses = []
for batch in batches(cfg, 3):
  local = {k: v[rows] for k, v in batch.items()}
  state, metrics = training.train_step(
      state, multihost.global_batch(local, shardings, cfg.batch_size))
  losses.append(float(metrics["loss"]))
# A checksum of the sharded parameters, reduced across both processes.
checksum = float(jax.jit(lambda p: sum(
    x.sum() for x in jax.tree.leaves(p))
                         )(state.params))
if process_id == 0:
  with open(out, "w") as f:
    json.dump({"losses": losses, "rows": [rows.start, rows.stop],
               "checksum": checksum}, f)
jax.distributed.shutdown()
