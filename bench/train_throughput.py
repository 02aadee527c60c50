"""Train-step time of Transformer++, PCformer, IIET and E-IIET, as ratios,
next to FLOPs, and against the same models in PyTorch.

  python bench/train_throughput.py [--sizes=tiny,55m] [--steps=5] [--rounds=3]
      [--archs=transformer,iiet,torch_iiet,...] [--torch_threads=N]

Builds the real sharded train step (one device, float32) for each row, then
times steps round-robin across rows (so machine noise hits all of them alike)
and reports median step time, tokens/s, and the ratio of each to
Transformer++ beside the ratio of the analytic FLOPs per token
(iiet_jax/train/flops.py). The FLOPs ratio is the floor: a measured ratio
close to it means the history mixes, extra norms and iteration plumbing cost
almost nothing. Rows (`--archs` picks a subset; ratios need their base row):

  transformer      Transformer++, the base of every JAX ratio
  pcformer         PCformer (RK order of configs/lm.py, 2)
  iiet             IIET, r = 3 iterations in every layer
  eiiet            E-IIET: per-layer r_t, tiny 3,1,1,1 and 55m
                   3,2,2,1,1,1,1,1,0,0,0,0 (a front-loaded pattern chosen
                   here, not one IIAD selected; at 55m a third of IIET's
                   iterations); other sizes stretch the 55m pattern over
                   their layers. Scanned layers, the config default: the
                   lean history scan runs each run of equal r_t with its own
                   count (models/history_scan.py), so the FLOPs ratio is
                   what it should cost
  eiiet_unrolled   (not by default) the same E-IIET with layers unrolled
  transformer_nfe  Transformer++ with as many layers as IIET has block
                   evaluations; IIET's time over it isolates the IIET
                   plumbing from how fast this machine runs blocks compared
                   to the head (`iiet_over_equal_nfe_transformer`)
  pcformer_nfe     the same control for PCformer: L * (order + 1) layers
                   (`pcformer_over_equal_nfe_transformer`)
  torch_ARCH       ARCH (transformer, pcformer, iiet; torch_eiiet not by
                   default) in PyTorch, from the same initial weights, on
                   the same batch, with torch.optim.AdamW
                   (bench/torch_twin.py) and --torch_threads threads (default:
                   the CPU cores this process may use). Its time ratio is
                   over torch_transformer; `jax_over_pytorch_tokens_per_s`
                   is JAX tokens/s over PyTorch tokens/s of the same ARCH.
                   Skipped, with the reason, when torch is not installed.
                   The twins live in a child process of their own
                   (torch_twin.Worker), which never imports JAX and times
                   their steps itself; the round-robin is the same, but
                   this process waits while the child steps a row and the
                   child waits while JAX steps one, so XLA's and PyTorch's
                   thread pools never compete for the cores (in one
                   process, 2 cores: PyTorch's OpenMP threads slowed the
                   tiny JAX Transformer++ step from 106 to 129 ms, and
                   making them passive slowed PyTorch's from 81 to 165 ms).
                   On a machine busy with other work, threads beyond the
                   free cores still slow PyTorch's own step (2 loaded
                   cores: 10x slower at 2 threads than at 1), so time on an
                   idle machine.

The last line of output is one JSON object per run: {size: {row: {step_ms,
tokens_per_s, time_ratio, flops_ratio (, iterations)}, "pytorch": {ARCH: {step_ms,
tokens_per_s, time_ratio, jax_over_pytorch_tokens_per_s}},
"iiet_over_equal_nfe_transformer": x, "pcformer_over_equal_nfe_transformer":
y}}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import jax
import numpy as np

import torch_twin
from iiet_jax import hostenv
from iiet_jax.models import ModelConfig
from iiet_jax.overrides import with_model
from iiet_jax.train import flops
from iiet_jax.train.build import build_training

ROOT = Path(__file__).resolve().parents[1]
JAX_ROWS = ("transformer", "pcformer", "iiet", "eiiet", "eiiet_unrolled",
            "transformer_nfe", "pcformer_nfe")
TORCH_ROWS = ("torch_transformer", "torch_pcformer", "torch_iiet",
              "torch_eiiet")
DEFAULT_ROWS = ("transformer", "pcformer", "iiet", "eiiet", "transformer_nfe",
                "pcformer_nfe", "torch_transformer", "torch_pcformer",
                "torch_iiet")
EIIET = {"tiny": (3, 1, 1, 1), "55m": (3, 2, 2, 1, 1, 1, 1, 1, 0, 0, 0, 0)}
NFE_CONTROLS = {"transformer_nfe": "iiet", "pcformer_nfe": "pcformer"}


def load_config(arg: str):
  from iiet_jax import overrides
  return overrides.load(f"{ROOT / 'configs' / 'lm.py'}:{arg}")


def eiiet_iterations(size: str, num_layers: int) -> tuple[int, ...]:
  pattern = EIIET.get(size, EIIET["55m"])
  if len(pattern) == num_layers:
    return pattern
  return tuple(pattern[i * len(pattern) // num_layers]
               for i in range(num_layers))


def row_config(row: str, size: str, args):
  """The run config of a row (a torch_ row: that of its JAX model)."""
  arch = row.removeprefix("torch_")
  base = NFE_CONTROLS.get(arch) or ("iiet" if arch.startswith("eiiet")
                                    else arch)
  cfg = load_config(f"model={base},size={size}")
  model = dict(cfg.model.to_dict(), dtype="float32",  # bf16 is emulated on CPU
               remat_policy=args.remat)
  if arch in NFE_CONTROLS:
    reference = ModelConfig.from_dict(model)
    model.update(arch="transformer",
                 num_layers=sum(reference.block_evaluations_per_layer()))
  if arch.startswith("eiiet"):
    model["iterations"] = eiiet_iterations(size, model["num_layers"])
    model["scan_layers"] = arch != "eiiet_unrolled"
  cfg = with_model(cfg, ModelConfig.from_dict(model))
  with cfg.unlocked():
    cfg.batch_size, cfg.seq_len = args.batch, args.seq_len
    cfg.mesh.data = 1
  return cfg


class JaxRun:
  """A JAX row: its sharded train step, state and batch."""

  def __init__(self, cfg, tokens):
    self.training = build_training(cfg, devices=jax.devices()[:1])
    self.state = self.training.init_state(0)
    self.params = jax.device_get(self.state.params)  # the twin's start
    self.batch = {"tokens": tokens}
    self.flops = flops.train_flops_per_token(self.training.model.config,
                                             cfg.seq_len)

  def step(self):
    self.state, metrics = self.training.train_step(self.state, self.batch)
    jax.block_until_ready(metrics)

  def timed_steps(self, n: int) -> list[float]:
    """`n` train steps; the seconds each took."""
    return torch_twin.timed(self.step, n)


class TorchRow:
  """A torch_ row: its twin lives in the worker, which times its steps."""

  def __init__(self, worker, row: str, source: JaxRun, cfg, tokens):
    self.worker, self.row, self.flops = worker, row, source.flops
    worker.build(row, torch_twin.spec_of(source.training.model.config,
                                         source.params, tokens,
                                         cfg.optimizer))

  def timed_steps(self, n: int) -> list[float]:
    return self.worker.steps(self.row, n)


def rows_of(spec: str, parser) -> list[str]:
  rows = [r for r in spec.split(",") if r]
  unknown = sorted(set(rows) - set(JAX_ROWS + TORCH_ROWS))
  if unknown:
    parser.error(f"--archs: unknown {unknown}; choose from "
                 f"{', '.join(JAX_ROWS + TORCH_ROWS)}")
  return rows


def build_runs(size: str, rows: list[str], args, worker) -> dict:
  """Every row of `size`, built and warmed up: JAX rows first, then the
  twins (in `worker`) from the initial parameters of their JAX rows."""
  runs, jax_runs = {}, {}
  vocab = load_config(f"model=transformer,size={size}").model.vocab_size
  tokens = np.random.default_rng(0).integers(
      0, vocab, (args.batch, args.seq_len)).astype(np.int32)
  for row in sorted(rows, key=lambda r: r.startswith("torch_")):
    cfg = row_config(row, size, args)
    arch = row.removeprefix("torch_")
    start = time.perf_counter()
    if row.startswith("torch_"):
      source = jax_runs.get(arch) or JaxRun(cfg, tokens)
      runs[row] = TorchRow(worker, row, source, cfg, tokens)
    else:
      runs[row] = jax_runs[arch] = JaxRun(cfg, tokens)
    runs[row].timed_steps(1)             # compile + warm-up
    runs[row].times = []
    print(f"{size} {row}: built and warmed up in "
          f"{time.perf_counter() - start:.1f}s", flush=True)
  return runs


def time_rows(runs: dict, args) -> None:
  """`rounds` rounds, each `steps` steps of every row in turn."""
  for _ in range(args.rounds):
    for run in runs.values():
      run.times += run.timed_steps(args.steps)


def report(size: str, runs: dict, args, skipped: str | None) -> dict:
  """Prints the table of `size` and returns its JSON entry."""
  n_tokens = args.batch * args.seq_len
  has_torch = any(row.startswith("torch_") for row in runs)
  print(f"\n{size}: batch {args.batch} x {args.seq_len}, "
        f"{args.rounds * args.steps} timed steps each, float32, "
        f"remat={args.remat}, {jax.devices()[0].device_kind}" +
        (f", torch threads {args.torch_threads} in their own process"
         if has_torch else ""))
  print(f"{'row':18s} {'step ms':>9s} {'tokens/s':>10s} {'time ratio':>11s} "
        f"{'FLOPs ratio':>12s} {'time/FLOPs':>11s}")
  out, pytorch = {}, {}
  for row, run in runs.items():
    t = statistics.median(run.times)
    torch_row = row.startswith("torch_")
    base = runs.get("torch_transformer" if torch_row else "transformer")
    entry = {"step_ms": round(1e3 * t, 2),
             "tokens_per_s": round(n_tokens / t, 1)}
    line = f"{row:18s} {1e3 * t:9.1f} {n_tokens / t:10.0f}"
    if base is not None:
      time_ratio = t / statistics.median(base.times)
      flops_ratio = run.flops / base.flops
      entry["time_ratio"] = round(time_ratio, 3)
      if not torch_row:
        entry["flops_ratio"] = round(flops_ratio, 3)
      line += (f" {time_ratio:11.3f} {flops_ratio:12.3f} "
               f"{time_ratio / flops_ratio:11.3f}")
    if row.startswith("eiiet"):
      entry["iterations"] = list(runs[row].training.model.config.iterations)
    (pytorch if torch_row else out)[row.removeprefix("torch_")] = entry
    print(line)
  for arch, entry in pytorch.items():
    if arch in out:
      entry["jax_over_pytorch_tokens_per_s"] = round(
          out[arch]["tokens_per_s"] / entry["tokens_per_s"], 3)
  if pytorch or skipped:
    out["pytorch"] = pytorch or {"skipped": skipped}
  pairs = [f"{a} {e['jax_over_pytorch_tokens_per_s']:.3f}"
           for a, e in pytorch.items() if "jax_over_pytorch_tokens_per_s" in e]
  if pairs:
    print("JAX tokens/s / PyTorch tokens/s: " + ", ".join(pairs))
  for arch, control in NFE_CONTROLS.items():
    if arch in runs and control in runs:
      value = (statistics.median(runs[control].times) /
               statistics.median(runs[arch].times))
      out[f"{control}_over_equal_nfe_transformer"] = round(value, 3)
      print(f"{control} step time / equal-NFE Transformer++ step time: "
            f"{value:.3f}")
  return out


def main():
  hostenv.reexec_with_huge_pages()  # as `iiet train` does (iiet_jax/hostenv.py)
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="tiny,55m")
  parser.add_argument("--archs", default=",".join(DEFAULT_ROWS),
                      help="rows to time: " + ", ".join(JAX_ROWS + TORCH_ROWS))
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--remat", default="none")
  parser.add_argument("--torch_threads", type=int,
                      default=len(os.sched_getaffinity(0))
                      if hasattr(os, "sched_getaffinity") else os.cpu_count())
  args = parser.parse_args()
  rows = rows_of(args.archs, parser)
  skipped = torch_twin.missing() if set(rows) & set(TORCH_ROWS) else None
  if skipped:
    print(f"PyTorch rows skipped: {skipped}", flush=True)
    rows = [r for r in rows if r not in TORCH_ROWS]

  results = {}
  # The worker starts first, so that it imports torch while JAX compiles.
  with (torch_twin.Worker(args.torch_threads) if set(rows) & set(TORCH_ROWS)
        else contextlib.nullcontext()) as worker:
    for size in args.sizes.split(","):
      runs = build_runs(size, rows, args, worker)
      time_rows(runs, args)
      results[size] = report(size, runs, args, skipped)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
