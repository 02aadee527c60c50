"""What the divergence watch costs per training step.

  python bench/divergence_overhead.py [--size=tiny] [--steps=20] [--rounds=7]

The training loop folds every step's loss and gradient norm into one device
scalar (train/divergence.py `Divergence.note`: one small dispatched op, no
host sync) and reads it back only where it already waits. This times the
real train step of Transformer++ at `size`, one device, in blocks of
`--steps` steps with and without `note` after each step, both in every round,
in turns of which goes first (so noise and any warm-up hit both alike), and
prints the median
seconds per step of each and their ratio. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import jax  # noqa: E402

from iiet_jax import overrides as ov  # noqa: E402
from iiet_jax.train.build import build_training  # noqa: E402
from iiet_jax.train.divergence import Divergence  # noqa: E402
from training import batches  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--size", default="tiny")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--rounds", type=int, default=7)
  args = parser.parse_args()
  config = ov.load(f"{ROOT}/configs/lm.py:model=transformer,size={args.size}",
                   {"total_steps": 10_000})
  training = build_training(config, jax.devices()[:1])
  state = training.init_state(0)
  batch = batches(config, 1)[0]
  state, metrics = training.train_step(state, batch)   # compiles
  watch = Divergence()
  watch.note(1, metrics)                                # compiles the fold
  jax.block_until_ready(metrics)

  def block(with_note: bool) -> float:
    nonlocal state
    start = time.perf_counter()
    for step in range(args.steps):
      state, m = training.train_step(state, batch)
      if with_note:
        watch.note(step, m)
    jax.block_until_ready(state.params)
    return (time.perf_counter() - start) / args.steps

  times = {"plain": [], "with_note": []}
  for r in range(args.rounds):
    for with_note in ((False, True) if r % 2 else (True, False)):
      times["with_note" if with_note else "plain"].append(block(with_note))
  medians = {k: statistics.median(v) for k, v in times.items()}
  result = {"size": args.size, "steps_per_block": args.steps,
            "rounds": args.rounds,
            "seconds_per_step": medians,
            "ratio_with_note": medians["with_note"] / medians["plain"]}
  print(f"median s/step: plain {medians['plain']:.5f}, with note "
        f"{medians['with_note']:.5f}; ratio {result['ratio_with_note']:.4f}")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
