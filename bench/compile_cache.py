"""Time from start to the first step, with a cold and a warm persistent
compilation cache (iiet_jax/train/compile_cache.py).

  python bench/compile_cache.py [--sizes=tiny,55m] [--repeats=2]

For each size, after one uncounted run that prepares the corpus and its
tokenizer, `iiet train` runs 3 steps in a fresh workdir three times in a
row against one fresh cache folder, `repeats` times over: the first run finds the
cache empty (cold), the later ones find the compiled steps (warm). Each run
is a whole process, as after a preemption; its goodput ledger
(summary.json) splits the time before the first productive step into
start-up (imports, data, build, init) and compile (the first step of each
phase: trace, compile or load, run once). The 55M config keeps its model and
takes a CPU-sized batch (8 x 128), since compile time follows the program,
not the batch. Runs train IIET (model=iiet), two phases at tiny: both
phases' first steps count. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["--config.total_steps=3", "--config.optimizer.warmup_steps=1",
         "--config.log_every=1", "--config.eval_every=3",
         "--config.data.eval_batches=1", "--config.checkpoint.every=3"]
SIZE_ARGS = {"tiny": [],
             "55m": ["--config.batch_size=8", "--config.seq_len=128",
                     "--config.data.workers=0", "--config.micro_batches=1"]}


def _run(size: str, workdir: Path, cache: Path) -> dict:
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "iiet_jax.main",
                  f"--config=configs/lm.py:model=iiet,size={size}",
                  f"--workdir={workdir}",
                  f"--config.compile_cache_dir={cache if str(cache) != '.' else ''}",
                  *STEPS, *SIZE_ARGS[size]],
                 cwd=ROOT, check=True, capture_output=True,
                 env={**os.environ, "JAX_PLATFORMS": "cpu"})
  wall = time.perf_counter() - start
  seconds = json.loads((workdir / "summary.json").read_text())[
      "goodput"]["run_seconds"]
  return {"startup_s": seconds["startup"], "compile_s": seconds["compile"],
          "to_first_step_s": seconds["startup"] + seconds["compile"],
          "wall_s": wall}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="tiny,55m")
  parser.add_argument("--repeats", type=int, default=2,
                      help="cold-then-warm series per size")
  args = parser.parse_args()
  results = {}
  for size in args.sizes.split(","):
    with tempfile.TemporaryDirectory() as tmp:
      # Not counted: prepares the corpus and trains the size's tokenizer
      # (32k pieces at 55m: about a minute), both cached afterwards.
      _run(size, Path(tmp) / "run", Path(""))
    cold, warm = [], []
    for r in range(args.repeats):
      with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, bucket in enumerate((cold, warm, warm)):
          result = _run(size, tmp / f"run{i}", tmp / "cache")
          bucket.append(result)
          print(f"{size:5s} {'cold' if bucket is cold else 'warm'}: start-up "
                f"{result['startup_s']:.1f} s + first steps "
                f"{result['compile_s']:.1f} s = "
                f"{result['to_first_step_s']:.1f} s (process "
                f"{result['wall_s']:.1f} s)", flush=True)
    med = lambda rows, k: statistics.median(r[k] for r in rows)
    results[size] = {
        "cold_to_first_step_s": med(cold, "to_first_step_s"),
        "warm_to_first_step_s": med(warm, "to_first_step_s"),
        "cold_compile_s": med(cold, "compile_s"),
        "warm_compile_s": med(warm, "compile_s"),
        "runs": {"cold": cold, "warm": warm}}
    r = results[size]
    print(f"{size:5s} median: cold {r['cold_to_first_step_s']:.1f} s, warm "
          f"{r['warm_to_first_step_s']:.1f} s to the first step "
          f"({r['warm_to_first_step_s'] / r['cold_to_first_step_s']:.2f}x)")
  print(json.dumps(results))


if __name__ == "__main__":
  main()
