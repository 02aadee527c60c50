"""Compile the real train step for a TPU topology on any host, and report memory.

  python -m iiet_jax.aot --config=configs/lm.py:model=iiet,size=1.3b \
      --topology=v5e:4x4 [--slices=2] [--config.mesh.fsdp=-1 ...]

Needs libtpu (`pip install -e .[tpu]`), not a TPU: devices come from
`jax.experimental.topologies`. Prints per-device memory (arguments, outputs,
temporaries, total against the chip's HBM), compiled and analytic FLOPs, and a
final JSON line with the same numbers. Topology names are GENERATION:SHAPE,
e.g. v5e:4x4 (v5e-16), v4:2x2x4 (v4-32, one device per megacore chip),
v5p:2x2x4, v6e:4x4.

  python -m iiet_jax.aot --config=... --topology=v5e:4x4 --fit

searches instead: for each remat policy, the fewest micro-batches that fit
(counts double, starting from what the least hungry policy "full" needs), then
prints the overrides of every fitting setting, fastest first by compiled
FLOPs per step (XLA's count of one micro-batch, times their number; remat
recompute shows there, the layer scan counts once in all of them alike).
"""

from __future__ import annotations

import json
import os
import sys
import time

# libtpu probes for TPU metadata on import; on a CPU host these keep it quiet.
# Without real TPUs there is nothing to guard, so several compile checks may
# run at once (libtpu otherwise holds a machine-wide lock file).
for key, value in (("JAX_PLATFORMS", "cpu"), ("TPU_SKIP_MDS_QUERY", "1"),
                   ("TPU_WORKER_HOSTNAMES", "localhost"),
                   ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
  os.environ.setdefault(key, value)

from absl import app, flags  # noqa: E402

from iiet_jax import overrides as ov  # noqa: E402

_CONFIG = flags.DEFINE_string(
    "config", None, "Config file, e.g. configs/lm.py:model=iiet,size=1.3b, "
    "with --config.KEY=VALUE overrides (iiet_jax/overrides.py).")
_TOPOLOGY = flags.DEFINE_string(
    "topology", "v5e:4x4", "TPU topology GENERATION:SHAPE, e.g. v5e:4x4, "
    "v4:2x2x4, v5p:2x2x4.")
_SLICES = flags.DEFINE_integer("slices", 1, "Number of slices joined by DCN.")
_FIT = flags.DEFINE_bool(
    "fit", False, "Search micro-batch counts and remat policies for the "
    "settings that fit, and print their overrides, fastest first.")
_FIT_POLICIES = flags.DEFINE_list(
    "fit_policies", [], "Remat policies --fit tries (default: full, "
    "per_evaluation for IIET / PCformer, save_dots, none).")

GiB = 2 ** 30


def topology_devices(topology: str, slices: int = 1):
  """TPU device objects of a topology, created on this host (needs libtpu)."""
  from jax.experimental import topologies
  try:
    import libtpu  # noqa: F401
  except ImportError as err:
    raise SystemExit("The AOT check needs libtpu: pip install -e '.[tpu]'"
                     ) from err
  kwargs = {"num_slices": slices} if slices > 1 else {}
  if topology.lower().startswith("v4"):
    kwargs["chip_config_name"] = "megacore"  # one device per chip, as on v4
  try:
    return topologies.get_topology_desc(topology, "tpu", **kwargs).devices
  except Exception as err:  # libtpu raises XlaRuntimeError for bad names
    raise SystemExit(
        f"--topology={topology} was not accepted by libtpu ({err}). Use "
        f"GENERATION:SHAPE such as v5e:4x4, v4:2x2x4, v5p:2x2x2.") from err


def compile_train_step(config, devices) -> dict:
  """Lowers and compiles the sharded train step; returns its numbers."""
  import jax
  import jax.numpy as jnp
  from iiet_jax.parallel.sharding import batch_sharding
  from iiet_jax.train import flops
  from iiet_jax.train.build import build_training

  start = time.perf_counter()
  training = build_training(config, devices=devices)
  state = training.sharded_state()
  batch = {"tokens": jax.ShapeDtypeStruct(
      (config.batch_size, config.seq_len), jnp.int32,
      sharding=batch_sharding(training.mesh, training.rules))}
  lowered = training.train_step.lower(state, batch)
  try:
    compiled = lowered.compile()
  except Exception as err:  # XLA rejects programs larger than HBM
    if "RESOURCE_EXHAUSTED" not in str(err):
      raise
    return {"variant": config.get("variant", ""), "fits": False,
            "devices": len(devices), "device_kind": devices[0].device_kind,
            "mesh": dict(training.mesh.shape),
            "micro_batches": config.micro_batches,
            "error": str(err).split("RESOURCE_EXHAUSTED:")[-1].strip()[:300]}
  seconds = time.perf_counter() - start

  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis() or {}
  kind = devices[0].device_kind
  peak, hbm_gib = flops.chip(kind)
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes
           - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
  n = len(devices)
  tokens = config.batch_size * config.seq_len
  cfg = training.model.config
  return {
      "variant": config.get("variant", ""),
      "device_kind": kind,
      "devices": n,
      "mesh": dict(training.mesh.shape),
      "preset": config.sharding.preset,
      "remat": cfg.remat_policy,
      "micro_batches": config.micro_batches,
      "compile_s": round(seconds, 1),
      "argument_gib": mem.argument_size_in_bytes / GiB,
      "output_gib": mem.output_size_in_bytes / GiB,
      "alias_gib": mem.alias_size_in_bytes / GiB,
      "temp_gib": mem.temp_size_in_bytes / GiB,
      "total_gib": total / GiB,
      "hbm_gib": hbm_gib,
      "fits": None if hbm_gib is None else total / GiB <= hbm_gib,
      # XLA counts each loop body once: an undercount for scanned layers.
      "compiled_tflop_per_device": cost.get("flops", float("nan")) / 1e12,
      "analytic_tflop_per_device": (flops.train_flops_per_token(
          cfg, config.seq_len) * tokens / n / 1e12),
      "peak_tflops": peak,
  }


def report(r: dict) -> str:
  mesh = " x ".join(f"{k}={v}" for k, v in r["mesh"].items())
  hbm = f"{r['hbm_gib']:.2f} GiB HBM" if r["hbm_gib"] else "HBM unknown"
  verdict = {True: "fits", False: "DOES NOT FIT", None: "?"}[r["fits"]]
  return "\n".join([
      f"{r['variant']} on {r['devices']} x {r['device_kind']} ({mesh}, "
      f"rules={r['preset']}, remat={r['remat']}, "
      f"micro_batches={r['micro_batches']}); compiled in {r['compile_s']}s",
      f"  per device: arguments {r['argument_gib']:.2f} GiB, outputs "
      f"{r['output_gib']:.2f} GiB (aliased {r['alias_gib']:.2f}), "
      f"temporaries {r['temp_gib']:.2f} GiB",
      f"  total {r['total_gib']:.2f} GiB of {hbm}: {verdict}",
      f"  train step FLOPs per device: analytic "
      f"{r['analytic_tflop_per_device']:.1f} TFLOP, XLA "
      f"{r['compiled_tflop_per_device']:.2f} TFLOP (loop bodies counted once)",
  ])


def fit(config, devices, policies=()) -> list[dict]:
  """The fewest micro-batches that fit, per remat policy, fastest first."""
  import ml_collections
  from iiet_jax.models import registry
  from iiet_jax.models.config import REMAT_POLICIES, ConfigError

  if not policies:
    policies = ["full", "save_dots", "none"]
    # per_evaluation lives in the history layers (models/history.py);
    # without a history it is full.
    if registry.get(config.model.arch).history:
      policies.insert(1, "per_evaluation")
  unknown = [p for p in policies if p not in REMAT_POLICIES or
             p == "save_names"]
  if unknown:
    raise SystemExit(f"--fit_policies: unknown {unknown}; choose from "
                     f"{[p for p in REMAT_POLICIES if p != 'save_names']}")
  # The least memory-hungry policy goes first: no other fits in fewer.
  policies = sorted(policies, key=lambda p: p != "full")
  most = max(1, config.batch_size // len(devices))
  counts = [1 << k for k in range(most.bit_length()) if (1 << k) <= most]
  fits, least = [], 0
  for policy in policies:
    for micro in counts[least:]:
      trial = ml_collections.ConfigDict(config.to_dict())
      trial.model.remat_policy, trial.micro_batches = policy, micro
      try:
        result = compile_train_step(trial, devices)
      except (ConfigError, ValueError) as err:
        print(f"  remat={policy} micro_batches={micro}: not buildable "
              f"({str(err).splitlines()[0]})", flush=True)
        continue
      total = result.get("total_gib")
      print(f"  remat={policy} micro_batches={micro}: "
            + (f"{total:.2f} GiB, fits" if result["fits"] else
               f"{'%.2f GiB' % total if total else 'out of memory'}, "
               f"does not fit"), flush=True)
      if result["fits"]:
        result["step_tflop"] = result["compiled_tflop_per_device"] * micro
        fits.append(result)
        if policy == "full":
          least = counts.index(micro)
        break
  return sorted(fits, key=lambda r: r["step_tflop"])


def overrides(result: dict) -> str:
  return (f"--config.micro_batches={result['micro_batches']} "
          f"--config.model.remat_policy={result['remat']}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required.")
  try:
    config = ov.load(_CONFIG.value, ov.config_args(sys.argv))
  except ov.OverrideError as err:
    raise SystemExit(f"Config error: {err}") from None
  devices = topology_devices(_TOPOLOGY.value, _SLICES.value)
  config.mesh.slices = _SLICES.value
  if _FIT.value:
    print(f"Searching remat policies and micro-batch counts for "
          f"{config.get('variant', '')} on {_TOPOLOGY.value}:",
          flush=True)
    found = fit(config, devices, _FIT_POLICIES.value)
    if not found:
      print("Nothing fits: use more chips (--topology) or a smaller "
            "--config.batch_size.")
    else:
      print("Fits, fastest first (compiled TFLOP per device per step):")
      for r in found:
        print(f"  {r['step_tflop']:8.2f}  {r['total_gib']:5.2f} GiB  "
              f"{overrides(r)}")
    print(json.dumps([dict(r, overrides=overrides(r)) for r in found]))
    sys.exit(0 if found else 1)
  result = compile_train_step(config, devices)
  result["topology"] = _TOPOLOGY.value
  result["slices"] = _SLICES.value
  if "error" in result:
    print(f"{result['variant']} on {result['devices']} x "
          f"{result['device_kind']} (micro_batches="
          f"{result['micro_batches']}): DOES NOT FIT: {result['error']}")
  else:
    print(report(result))
  print(json.dumps(result))
  sys.stdout.flush()
  if result["fits"] is False:
    sys.exit(1)


if __name__ == "__main__":
  # absl parses the flags above; the --config.* overrides go to ov.load.
  app.run(main, flags_parser=lambda argv: flags.FLAGS(
      ov.without_overrides(argv)))
