"""Where a train step's time goes, by XLA op, from a `jax.profiler` trace.

  python bench/profile_step.py [--size=55m] [--arch=iiet] [--steps=2]
      [--top=25] [--out=/tmp/profile_iiet]

Builds the bench's train step (bench/train_throughput.py's row config: one
device, float32, batch 4 x 256, no remat), runs it once to compile, traces
`--steps` steps into OUT (open it in TensorBoard / Perfetto), and prints the
time per step of every op kind (the fusion name without its number, e.g.
`ynn_fusion`: the matrix products XLA:CPU hands to YNNPACK) and of the
`--top` slowest ops with their HLO shape, read from the compiled program.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import types
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput  # noqa: E402
from iiet_jax.train.build import build_training  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="55m")
  parser.add_argument("--arch", default="iiet",
                      help="a JAX row of bench/train_throughput.py")
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  out = Path(args.out or f"/tmp/profile_{args.arch}_{args.size}")
  cfg = train_throughput.row_config(args.arch, args.size, types.SimpleNamespace(
      remat="none", batch=4, seq_len=256))
  training = build_training(cfg, devices=jax.devices()[:1])
  state = training.init_state(0)
  batch = {"tokens": np.random.default_rng(0).integers(
      0, cfg.model.vocab_size, (4, 256)).astype(np.int32)}
  step = training.train_step.lower(state, batch).compile()
  hlo = step.as_text()  # the op names the trace shows
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  with jax.profiler.trace(str(out), create_perfetto_trace=True):
    for _ in range(args.steps):
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics)

  trace = sorted(out.glob("**/*.trace.json.gz"))[-1]
  events = json.load(gzip.open(trace))
  events = events["traceEvents"] if isinstance(events, dict) else events
  per_op = collections.Counter()
  for e in events:
    # XLA ops only: not Python frames ($...), runtime scopes or "end:" marks.
    if e.get("ph") == "X" and re.fullmatch(r"[\w\-]+(\.\d+)?", e["name"]):
      per_op[e["name"]] += e.get("dur", 0) / 1e3 / args.steps
  kinds = collections.Counter()
  for name, ms in per_op.items():
    kinds[re.sub(r"\.\d+$", "", name)] += ms
  total = sum(kinds.values())
  print(f"{args.arch} {args.size}: {total:.0f} ms of XLA ops per step "
        f"(trace in {out})")
  for kind, ms in kinds.most_common(15):
    print(f"  {ms:9.1f} ms  {100 * ms / total:5.1f}%  {kind}")
  print(f"slowest {args.top} ops:")
  for name, ms in per_op.most_common(args.top):
    m = re.search(r"%" + re.escape(name) + r" = (\S+) ", hlo)
    print(f"  {ms:9.1f} ms  {name:40s} {m.group(1)[:70] if m else ''}")
  print(json.dumps({"arch": args.arch, "size": args.size,
                    "ms_per_step": round(total, 1),
                    "kinds": {k: round(v, 1) for k, v in kinds.most_common(15)}}))


if __name__ == "__main__":
  main()
