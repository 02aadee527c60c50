"""The plateau question at 55M on one GPU, in one command (about 10 minutes
on an H100):

  python bench/gpu_55m.py [--root=runs/gpu_55m] [--steps=250] [--batch=64]
  python bench/gpu_55m.py --smoke      # CPU: the same plumbing, tiny shapes

Trains configs/reproduce.py at size=55m (12 layers, d=512, vocabulary
32,000 trained on the stdlib corpus) for `--steps` steps of `--batch` x 2048
tokens, bfloat16 with cuDNN flash attention, on data order 0 / init 0, one
system after another: Transformer++, IIET with SPEC's history init, IIET
with the robust start (system iiet_robust). Prints one line per system
(validation loss on the held-out pass, tokens/s, MFU) and writes
ROOT/gpu_55m.json; with $OUT set (the device machine's output folder) the
JSON goes there too.

Expected (predictions, not measurements: analytic FLOPs of train/flops.py at
an assumed 40% MFU of an H100's 989 TFLOP/s; printed again at start):
Transformer++ about 0.16 s per step of 64 x 2048 tokens, IIET (r=3, NFE 48)
about 0.54 s, so 250 steps of the three systems take about 5 minutes of
training plus compilation and the one-time corpus and tokenizer preparation
(about 2 minutes on 16 cores). What to look for: whether IIET from SPEC's
init stays more than 0.3 nat above Transformer++ at step 250 (the tiny
plateau) and whether the robust start closes that gap.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("transformer", "iiet", "iiet_robust")
MFU_ASSUMED = 0.40
H100_PEAK = 989e12


def overrides(args) -> dict:
  if args.smoke:   # the plumbing on a CPU: tiny shapes, a few steps
    return {"total_steps": 6, "optimizer.warmup_steps": 2, "batch_size": 4,
            "seq_len": 128, "model.num_layers": 2, "model.d_model": 64,
            "model.d_ff": 128, "model.vocab_size": 2048,
            "model.dtype": "float32", "model.attention_impl": "xla",
            "data.tokenizer_sample_chars": 2_000_000, "eval_every": 6,
            "data.eval_batches": 2, "checkpoint.every": 6,
            "data.workers": 0, "mesh.data": -1}
  return {"total_steps": args.steps, "batch_size": args.batch,
          "optimizer.warmup_steps": max(args.steps // 10, 1),
          "model.dtype": "bfloat16", "model.attention_impl": "cudnn",
          "model.remat_policy": "none",
          "data.tokenizer_sample_chars": 40_000_000,
          "eval_every": args.steps, "data.eval_batches": 16,
          "checkpoint.every": args.steps, "log_every": 25}


def predicted_step_seconds(system: str, args) -> float:
  sys.path.insert(0, str(ROOT))
  from iiet_jax import overrides as ov
  from iiet_jax.models.config import ModelConfig
  from iiet_jax.train import flops
  config = ov.load(f"configs/reproduce.py:size=55m,system={system}")
  model = ModelConfig.from_dict(config.model)
  per_token = flops.train_flops_per_token(model, config.seq_len)
  return per_token * args.batch * config.seq_len / (MFU_ASSUMED * H100_PEAK)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", default="runs/gpu_55m")
  parser.add_argument("--steps", type=int, default=250)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--smoke", action="store_true")
  args = parser.parse_args()
  root = Path(args.root).resolve()
  root.mkdir(parents=True, exist_ok=True)
  if not args.smoke:
    for system in SYSTEMS:
      print(f"expected {system}: {predicted_step_seconds(system, args):.2f} "
            f"s/step at {MFU_ASSUMED:.0%} MFU of an H100", flush=True)
  env = dict(os.environ)
  if args.smoke:
    env["JAX_PLATFORMS"] = "cpu"
  results = {}
  for system in SYSTEMS:
    workdir = root / system
    cmd = [sys.executable, "-m", "iiet_jax.main", "train",
           f"--config=configs/reproduce.py:size=55m,system={system}",
           f"--workdir={workdir}", "--config.seed=0"]
    cmd += [f"--config.{k}={v}" for k, v in overrides(args).items()]
    start = time.perf_counter()
    code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    if code:
      raise SystemExit(f"{system} failed (exit {code})")
    summary = json.loads((workdir / "summary.json").read_text())
    results[system] = {k: summary.get(k) for k in (
        "steps", "validation_loss", "tokens_per_s", "mfu")}
    results[system]["wall_s"] = round(time.perf_counter() - start, 1)
    r = results[system]
    print(f"RESULT {system}: validation loss {r['validation_loss']:.4f}, "
          f"{r['tokens_per_s']:,.0f} tok/s, MFU {r['mfu']}, "
          f"{r['wall_s']:.0f} s", flush=True)
  base = results["transformer"]["validation_loss"]
  for system in SYSTEMS[1:]:
    gap = results[system]["validation_loss"] - base
    results[system]["vs_transformer"] = gap
    print(f"{system} - Transformer++: {gap:+.4f} nat"
          f"{' (plateau: > +0.3)' if gap > 0.3 else ''}")
  text = json.dumps(results, indent=1)
  (root / "gpu_55m.json").write_text(text)
  if os.environ.get("OUT"):
    Path(os.environ["OUT"], "gpu_55m.json").write_text(text)
  print(text)


if __name__ == "__main__":
  main()
