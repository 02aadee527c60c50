"""Multi-host set-up and per-process input feeding.

`initialize` starts `jax.distributed` when the launch environment asks for it:
on TPU pods and SLURM clusters JAX discovers the coordinator itself (the
launchers set IIET_DISTRIBUTED=auto to ask for that explicitly), elsewhere
the variables IIET_COORDINATOR, IIET_NUM_PROCESSES and IIET_PROCESS_ID name
it.
Each process then feeds only its own rows of the global batch.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts jax.distributed if asked to; returns whether it did."""
  coordinator = coordinator or os.environ.get("IIET_COORDINATOR")
  if num_processes is None and "IIET_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["IIET_NUM_PROCESSES"])
  if process_id is None and "IIET_PROCESS_ID" in os.environ:
    process_id = int(os.environ["IIET_PROCESS_ID"])
  explicit = coordinator is not None
  cluster = os.environ.get("IIET_DISTRIBUTED") == "auto" or any(
      k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID",
                                "MEGASCALE_COORDINATOR_ADDRESS"))
  if not explicit and not cluster:
    return False
  if explicit and (num_processes is None or process_id is None):
    raise ValueError(
        f"IIET_COORDINATOR={coordinator} is set, so IIET_NUM_PROCESSES and "
        f"IIET_PROCESS_ID must be set too (got {num_processes}, {process_id}).")
  if explicit:
    # CPU hosts need a collectives backend; GPU and TPU ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator,
                             num_processes=num_processes,
                             process_id=process_id)
  return True


def process_rows(global_batch: int) -> slice:
  """The rows of the global batch this process reads (contiguous, disjoint)."""
  n, i = jax.process_count(), jax.process_index()
  if global_batch % n:
    raise ValueError(f"Global batch {global_batch} does not split over {n} "
                     f"processes.")
  per = global_batch // n
  return slice(i * per, (i + 1) * per)


def global_batch(local: Mapping[str, np.ndarray],
                 shardings: Mapping[str, NamedSharding],
                 global_rows: int) -> dict[str, jax.Array]:
  """Global arrays from this process's rows (`process_rows`) of each input."""
  out = {}
  for key, value in local.items():
    shape = (global_rows, *value.shape[1:])
    out[key] = jax.make_array_from_process_local_data(shardings[key], value,
                                                      shape)
  return out


def sum_over_processes(values: np.ndarray) -> np.ndarray:
  """`values` summed over every process (each process calls it)."""
  if jax.process_count() == 1:
    return values
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(values)).sum(0)


def primary_says(ok: bool) -> bool:
  """Process 0's `ok`, in every process (one small broadcast; a single
  process just returns it)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
