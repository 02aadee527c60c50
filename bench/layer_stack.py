"""Scan vs unroll of the layer stack: compile time and activation memory.

  python bench/layer_stack.py [--layers=4,8,16,24] [--arch=iiet] [--out=docs/layer_stack.md]

Lowers and compiles the gradient of the next-token loss (what a train step
runs) for each depth, with the layer stack scanned and unrolled, and reads
XLA's memory analysis of the compiled program. Parameters are abstract
(`jax.eval_shape`), so nothing is allocated and nothing is run. Prints a table,
writes it as markdown, and ends with one JSON line of the numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from iiet_jax.models import ModelConfig, build_model
from iiet_jax.train.loss import next_token_loss

MiB = 2 ** 20


def measure(cfg: ModelConfig, batch: int, length: int) -> dict[str, float]:
  model = build_model(cfg)
  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), tokens)

  def loss(variables, tokens_BT):
    return next_token_loss(model.apply(variables, tokens_BT), tokens_BT)[0]

  start = time.perf_counter()
  lowered = jax.jit(jax.grad(loss)).lower(params, tokens)
  traced = time.perf_counter()
  compiled = lowered.compile()
  done = time.perf_counter()
  mem = compiled.memory_analysis()
  return {
      "trace_s": traced - start,
      "compile_s": done - traced,
      "temp_mib": mem.temp_size_in_bytes / MiB,
      "args_mib": mem.argument_size_in_bytes / MiB,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--layers", default="4,8,16,24")
  parser.add_argument("--arch", default="iiet")
  parser.add_argument("--iterations", type=int, default=3)
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--remat", default="full")
  parser.add_argument("--out", default="")
  args = parser.parse_args()

  rows = []
  for L in (int(x) for x in args.layers.split(",")):
    row = {"layers": L}
    for scan in (True, False):
      cfg = ModelConfig(arch=args.arch, num_layers=L, d_model=args.d_model,
                        num_heads=4, d_ff=args.d_model * 11 // 4,
                        vocab_size=1024, iterations=args.iterations,
                        dtype="float32", remat_policy=args.remat,
                        scan_layers=scan)
      key = "scan" if scan else "unroll"
      for name, value in measure(cfg, args.batch, args.length).items():
        row[f"{key}_{name}"] = round(value, 2)
      print(f"L={L:3d} {key:6s} compile {row[key + '_compile_s']:7.2f}s  "
            f"trace {row[key + '_trace_s']:6.2f}s  "
            f"temp {row[key + '_temp_mib']:8.1f} MiB", flush=True)
    rows.append(row)

  header = (f"{args.arch}, r={args.iterations}, d={args.d_model}, "
            f"B={args.batch}, T={args.length}, remat={args.remat}, float32, "
            f"{jax.devices()[0].platform}; gradient of the loss")
  lines = [f"Layer stack, {header}", "",
           "| layers | scan compile s | scan temp MiB | unroll compile s | "
           "unroll temp MiB |", "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['layers']} | {r['scan_compile_s']} | "
                 f"{r['scan_temp_mib']} | {r['unroll_compile_s']} | "
                 f"{r['unroll_temp_mib']} |")
  table = "\n".join(lines)
  print()
  print(table)
  if args.out:
    Path(args.out).write_text(
        "# Layer stack: scan vs unroll\n\nProduced by `python bench/layer_stack.py "
        f"--out={args.out}`.\n\n{table}\n")
  print(json.dumps({"config": header, "rows": rows}))


if __name__ == "__main__":
  main()
