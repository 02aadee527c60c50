"""Train-step time of Transformer++, PCformer and IIET, as ratios, next to FLOPs.

  python bench/train_throughput.py [--sizes=tiny,55m] [--steps=5] [--rounds=3]

Builds the real sharded train step (one device) for each architecture, then
times steps round-robin across architectures (so machine noise hits all of
them alike) and reports median step time, tokens/s, and the ratio of each to
Transformer++ beside the ratio of the analytic FLOPs per token. The FLOPs ratio
is the floor: a measured ratio close to it means the history mixes, extra
norms and iteration plumbing cost almost nothing. `transformer_nfe` is a
control: Transformer++ with as many layers as IIET has block evaluations, so
IIET's time over it isolates the cost of the IIET plumbing from how fast this
machine runs blocks compared to the head. The last line of output is one JSON
object with all ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from iiet_jax.train import flops
from iiet_jax.train.build import build_training

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("transformer", "pcformer", "iiet", "transformer_nfe")


def load_config(arg: str):
  spec = importlib.util.spec_from_file_location("lm", ROOT / "configs" / "lm.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="tiny,55m")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--remat", default="none")
  args = parser.parse_args()

  results = {}
  for size in args.sizes.split(","):
    runs = {}
    for arch in ARCHS:
      cfg = load_config(f"model={arch.split('_')[0]},size={size}")
      if arch == "transformer_nfe":
        iiet = load_config(f"model=iiet,size={size}").model
        cfg.model.num_layers = iiet.num_layers * (1 + iiet.iterations)
      cfg.model.dtype = "float32"          # bf16 is emulated on CPU
      cfg.model.remat_policy = args.remat
      cfg.batch_size, cfg.seq_len = args.batch, args.seq_len
      cfg.mesh.data = 1
      training = build_training(cfg, devices=jax.devices()[:1])
      state = training.init_state(0)
      rng = np.random.default_rng(0)
      batch = {"tokens": rng.integers(0, cfg.model.vocab_size,
                                      (args.batch, args.seq_len)
                                      ).astype(np.int32)}
      start = time.perf_counter()
      state, metrics = training.train_step(state, batch)   # compile + warm-up
      jax.block_until_ready(metrics)
      compile_s = time.perf_counter() - start
      runs[arch] = dict(training=training, state=state, batch=batch, times=[],
                        compile_s=compile_s,
                        flops=flops.train_flops_per_token(
                            training.model.config, args.seq_len))
      print(f"{size} {arch}: compiled in {compile_s:.1f}s", flush=True)
    for _ in range(args.rounds):
      for arch, run in runs.items():
        for _ in range(args.steps):
          start = time.perf_counter()
          run["state"], metrics = run["training"].train_step(run["state"],
                                                             run["batch"])
          jax.block_until_ready(metrics)
          run["times"].append(time.perf_counter() - start)

    base = runs["transformer"]
    base_t = statistics.median(base["times"])
    tokens = args.batch * args.seq_len
    print(f"\n{size}: batch {args.batch} x {args.seq_len}, "
          f"{args.rounds * args.steps} timed steps each, float32, "
          f"remat={args.remat}, {jax.devices()[0].device_kind}")
    print(f"{'model':15s} {'step ms':>9s} {'tokens/s':>10s} {'time ratio':>11s} "
          f"{'FLOPs ratio':>12s} {'time/FLOPs':>11s}")
    results[size] = {}
    for arch, run in runs.items():
      t = statistics.median(run["times"])
      time_ratio, flops_ratio = t / base_t, run["flops"] / base["flops"]
      results[size][arch] = {"step_ms": round(1e3 * t, 2),
                             "tokens_per_s": round(tokens / t, 1),
                             "time_ratio": round(time_ratio, 3),
                             "flops_ratio": round(flops_ratio, 3)}
      print(f"{arch:15s} {1e3 * t:9.1f} {tokens / t:10.0f} {time_ratio:11.3f} "
            f"{flops_ratio:12.3f} {time_ratio / flops_ratio:11.3f}")
    control = statistics.median(runs["transformer_nfe"]["times"])
    iiet_vs_control = statistics.median(runs["iiet"]["times"]) / control
    results[size]["iiet_over_equal_nfe_transformer"] = round(iiet_vs_control, 3)
    print(f"IIET step time / equal-NFE Transformer++ step time: "
          f"{iiet_vs_control:.3f}")
  print(json.dumps(results))


if __name__ == "__main__":
  main()
