"""Two-stage IIET with every switch option, on the same Transformer++ seeds.

  python bench/switch_options.py [--root=runs/reproduce] [--seeds=3]
      [--options=spec,inherit,...] [--out=docs/switch_options.md]

Needs the Transformer++ runs of bench/reproduce.py (ROOT/transformer/
seed_<s>, with their switch-step checkpoints, 300 and 450 at tiny). Each option is a set of
`switch.*` overrides of the two-stage system; each run starts from its
seed's Transformer++ checkpoint at the switch and trains the IIET phase
(ROOT/switch_options/<option>/seed_<s>), so all options see the same state
and the same batches. Reported per option, mean ± std over seeds: the
validation loss at the end, its difference to Transformer++ at the end, and
the switch cost: the mean training loss over the first 50 IIET steps minus
the Transformer++ run's over the same steps (same batches). The last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import reproduce  # noqa: E402

SPEC = {"switch.history_init": "average", "switch.norm_init": "unit"}
OPTIONS = {
    "spec": dict(SPEC),
    "spec+lr10": {**SPEC, "switch.history_lr_scale": 10},
    "inherit": {"switch.history_init": "inherit", "switch.norm_init": "unit"},
    "inherit+fit": {"switch.history_init": "inherit",
                    "switch.norm_init": "fit"},
    "inherit+lr10": {"switch.history_init": "inherit",
                     "switch.norm_init": "unit",
                     "switch.history_lr_scale": 10},
    "inherit+lr30": {"switch.history_init": "inherit",
                     "switch.norm_init": "unit",
                     "switch.history_lr_scale": 30},
    # The switch point: IIET for the last half instead of the last quarter.
    "inherit+switch0.5": {"switch.history_init": "inherit",
                          "switch.norm_init": "unit", "switch_at": 0.5},
}


def _train_losses(workdir: Path) -> dict[int, float]:
  out = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    if row.get("split") == "train":
      out[row["step"]] = row["loss"]
  return out


def switch_cost(run: Path, transformer: Path, switch: int) -> float:
  ours, base = _train_losses(run), _train_losses(transformer)
  steps = [s for s in ours if switch < s <= switch + 50 and s in base]
  return statistics.fmean(ours[s] - base[s] for s in steps)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", default="runs/reproduce")
  parser.add_argument("--size", default="tiny")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--options", default=",".join(OPTIONS))
  parser.add_argument("--out", default="docs/switch_options.md")
  args = parser.parse_args()
  root = Path(args.root).resolve()
  results = {}
  for option in args.options.split(","):
    rows = []
    for seed in range(args.seeds):
      run = reproduce.Run("two_stage", seed,
                          root / "switch_options" / option / f"seed_{seed}",
                          dict(OPTIONS[option]))
      print(f"=== {option} seed {seed}", flush=True)
      summary = reproduce.train(run, root, args.size)
      tf_dir = root / "transformer" / f"seed_{seed}"
      tf = json.loads((tf_dir / "summary.json").read_text())
      switch = reproduce.switch_step(run, args.size)
      rows.append({"loss": summary["validation_loss"],
                   "vs_transformer": summary["validation_loss"]
                   - tf["validation_loss"],
                   "switch_cost": switch_cost(run.workdir, tf_dir, switch)})
    results[option] = rows
  lines = ["| option | overrides | validation loss | vs Transformer++ | "
           "switch cost (train loss, first 50 IIET steps) |",
           "|---|---|---|---|---|"]
  summary = {}
  for option, rows in results.items():
    stats = {}
    for key in ("loss", "vs_transformer", "switch_cost"):
      vals = [r[key] for r in rows]
      stats[key] = (statistics.fmean(vals),
                    statistics.stdev(vals) if len(vals) > 1 else 0.0)
    summary[option] = {k: v[0] for k, v in stats.items()}
    over = " ".join(f"`{k.split('.')[-1]}={v}`"
                    for k, v in OPTIONS[option].items())
    lines.append(f"| {option} | {over} | " + " | ".join(
        f"{m:+.4f} ± {s:.4f}" if key != "loss" else f"{m:.4f} ± {s:.4f}"
        for key, (m, s) in stats.items()) + " |")
  table = "\n".join(lines)
  print(table)
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  command = " ".join(["python", "bench/switch_options.py", *sys.argv[1:]])
  out.write_text(f"# Switch options (`{command}`)\n\n"
                 f"{args.seeds} seeds of the tiny two-stage IIET, each from "
                 "its seed's Transformer++ checkpoint at step 450 (of 600); "
                 "mean ± std over seeds. See bench/switch_options.py for "
                 "the columns and docs/reproduction.md for the context.\n\n"
                 + table + "\n")
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
