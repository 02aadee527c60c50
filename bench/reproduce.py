"""Does IIET help? Every system of the paper, seeds, one command.

  python bench/reproduce.py [--root=runs/reproduce] [--size=tiny] [--quick]
      [--report=docs/reproduction.md]

Trains every system of configs/reproduce.py (Transformer++, PCformer, IIET,
two-stage IIET with the default and SPEC switch init, the two Transformer++
controls, the r ablation) for its seeds, one run after another in
`ROOT/<system>/seed_<s>` through the real `iiet train`; distils E-IIET from
IIET seed 0 at two iteration budgets through `iiet distill` (and, as the
control, with every iteration kept); measures the
switch jump (bench/switch_jump.py); exports every run and scores it with
lm-evaluation-harness on an offline task generated from the validation
split (bench/choice_task.py); times E-IIET decoding as bench/decode.py does;
then writes docs/reproduction.md with its plots (docs/reproduction/*.png,
matplotlib) from the numbers in ROOT/results.json.

Resumable: a finished run (its summary.json at total_steps, not preempted)
is reused, an unfinished or preempted one
continues from its newest checkpoint, exports and scores are cached per run.
The two-stage runs start from a copy of their seed's Transformer++
checkpoint at the switch step: the same state, data position and schedule
the two-stage run would reach itself, so its first 75% is not trained twice.

Full run: about 80 minutes on 2 CPU cores. `--quick` (40 steps, one seed,
12 steps of distillation, 100 task items) checks the plumbing in a few
minutes and writes its report under ROOT instead of docs/. The last output
line is one JSON object: every system's final validation loss and accuracy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import choice_task  # noqa: E402  (bench/ siblings)
import workers  # noqa: E402
from iiet_jax import overrides as ov  # noqa: E402
from iiet_jax.runs import finished_summary  # noqa: E402

# E-IIET: share of IIET's iterations kept; 1.0 is the control, the same
# distillation steps with no cut (distilling is also extra training).
BUDGETS = (0.25, 0.5, 1.0)
# Accuracy items: disjoint windows of the held-out documents (about 1.3M
# characters at tiny hold about 4,900 windows).
ITEMS = 2000
QUICK = {"total_steps": 40, "checkpoint.every": 10, "eval_every": 10,
         "log_every": 5, "optimizer.warmup_steps": 5,
         "data.eval_batches": 2}
QUICK_DISTILL_STEPS = 12


def load_systems():
  return ov.load_module(str(ROOT / "configs" / "reproduce.py"))


@dataclasses.dataclass
class Run:
  system: str
  seed: int
  workdir: Path
  overrides: dict
  tag: str = ""            # E-IIET: the budget

  @property
  def name(self) -> str:
    return f"{self.system}{self.tag}/seed_{self.seed}"


def plan(root: Path, size: str, quick: bool) -> list[Run]:
  cfg = load_systems()
  runs = []
  for system, (_, seeds) in cfg.SYSTEMS.items():
    if system == "eiiet":
      continue
    for seed in range(1 if quick else seeds):
      extra = dict(QUICK) if quick else {}
      if quick and system == "transformer_equal_flops":
        base = ov.load(f"{ROOT / 'configs' / 'reproduce.py'}:size={size},"
                       f"system=iiet")
        base.total_steps = QUICK["total_steps"]
        extra["total_steps"] = cfg.equal_flops_steps(base)
      runs.append(Run(system, seed, root / system / f"seed_{seed}", extra))
  teacher = root / "iiet" / "seed_0"
  for budget in BUDGETS:
    extra = {"distill.teacher": str(teacher), "distill.budget": budget,
             "distill.tau": 0.0}
    if quick:
      extra.update(QUICK, total_steps=QUICK_DISTILL_STEPS,
                   **{"optimizer.warmup_steps": 2, "checkpoint.every": 6})
    tag = f"_budget{budget:g}"
    runs.append(Run("eiiet", 0, root / f"eiiet{tag}" / "seed_0", extra, tag))
  return runs


def switch_step(run: Run, size: str) -> int:
  cfg = ov.load(f"{ROOT / 'configs' / 'reproduce.py'}:size={size},"
                f"system={run.system}")
  total = run.overrides.get("total_steps", cfg.total_steps)
  return round(run.overrides.get("switch_at", cfg.switch_at) * total)


def seed_from_transformer(run: Run, root: Path, size: str) -> None:
  """Two-stage: copy the Transformer++ checkpoint of the switch step."""
  if (run.workdir / "checkpoints").exists():
    return
  step = switch_step(run, size)
  source = root / "transformer" / f"seed_{run.seed}" / "checkpoints" / str(step)
  if not source.exists():
    raise SystemExit(f"{run.name}: {source} is missing; the Transformer++ "
                     f"run of seed {run.seed} must keep its step {step}")
  (run.workdir / "checkpoints").mkdir(parents=True)
  shutil.copytree(source, run.workdir / "checkpoints" / str(step))


def depends_on(run: Run) -> str | None:
  """The run whose result this one starts from: a two-stage run copies its
  seed's Transformer++ checkpoint, E-IIET distils IIET seed 0."""
  if run.system.startswith("two_stage"):
    return f"transformer/seed_{run.seed}"
  if run.system == "eiiet":
    return "iiet/seed_0"
  return None


def train(run: Run, root: Path, size: str, cores=None, after=None) -> dict:
  """Runs (or resumes, or reads) one run, once `after` (the future of the
  run it depends on) is done; returns its summary + timing."""
  if after is not None:
    after.result()
  timing = run.workdir / "wall.json"
  if finished_summary(run.workdir) is None:
    if run.system.startswith("two_stage"):
      seed_from_transformer(run, root, size)
    command = "distill" if run.system == "eiiet" else "train"
    cmd = [sys.executable, "-m", "iiet_jax.main", command,
           f"--config=configs/reproduce.py:size={size},system={run.system}",
           f"--workdir={run.workdir}", f"--config.seed={run.seed}"]
    cmd += [f"--config.{k}={v}" for k, v in run.overrides.items()]
    run.workdir.mkdir(parents=True, exist_ok=True)
    print(f"=== {run.name}: training (log {run.workdir}/train.log)",
          flush=True)
    start = time.perf_counter()
    code = workers.run(cmd, run.workdir / "train.log", cores, ROOT)
    spent = time.perf_counter() - start
    before = json.loads(timing.read_text())["seconds"] if timing.exists() else 0
    timing.write_text(json.dumps({"seconds": before + spent}))
    if code:
      raise SystemExit(f"{run.name} failed (exit {code}); see "
                       f"{run.workdir}/train.log. Rerun to resume.")
  out = finished_summary(run.workdir)
  if out is None:
    raise SystemExit(f"{run.name} stopped before its last step; see "
                     f"{run.workdir}/train.log. Rerun to resume.")
  out["wall_s"] = (json.loads(timing.read_text())["seconds"]
                   if timing.exists() else None)
  return out


def export_and_score(runs: list[Run], task_dir: Path) -> dict[str, dict]:
  """HF export of every run (cached) and one lm-eval pass over them all."""
  todo = []
  for run in runs:
    out = run.workdir / "hf"
    if not (out / "config.json").exists():
      cmd = [sys.executable, "-m", "iiet_jax.main", "export",
             f"--workdir={run.workdir}", f"--out={out}", "--overwrite"]
      with open(run.workdir / "export.log", "w") as log:
        if subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=log).returncode:
          raise SystemExit(f"export of {run.name} failed; see "
                           f"{run.workdir}/export.log")
    if not (run.workdir / "choice.json").exists():
      todo.append(str(run.workdir))
  if todo:
    print(f"=== lm-eval on {len(todo)} exports", flush=True)
    cmd = [sys.executable, str(ROOT / "bench" / "lm_eval_runs.py"),
           f"--task_dir={task_dir}", *todo]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    with open(task_dir / "lm_eval.log", "a") as log:
      if subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=log,
                        env=env).returncode:
        raise SystemExit(f"lm-eval failed; see {task_dir}/lm_eval.log")
  return {str(r.workdir): json.loads((r.workdir / "choice.json").read_text())
          for r in runs}


def decode_costs(runs: list[Run], size: str) -> dict[str, float]:
  """Decode cost of each E-IIET relative to IIET (r = 3), bench/decode.py's
  measurement: random-init float32 models, prefill + greedy decode loop,
  medians of round-robin rounds."""
  import statistics
  import decode as decode_bench
  students = {r.name: json.loads((r.workdir / "summary.json").read_text())
              ["student_iterations"] for r in runs if r.system == "eiiet"}
  batch, prompt, new = decode_bench.SHAPES[size]
  built = {arch: decode_bench.build(decode_bench.load_model(
      arch, size, {}), batch, prompt, new) for arch in ("iiet", "transformer")}
  for name, r_t in students.items():
    built[name] = decode_bench.build(decode_bench.load_model(
        "iiet", size, dict(iterations=tuple(r_t), scan_layers=False)),
        batch, prompt, new)
  times = {k: [] for k in built}
  for _ in range(5):
    for k, b in built.items():
      times[k].append(decode_bench.timed(b["decode"]))
  base = statistics.median(times["iiet"])
  return {k: statistics.median(v) / base for k, v in times.items()
          if k != "iiet"}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", default="runs/reproduce")
  parser.add_argument("--size", default="tiny")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--workers", type=int, default=2,
                      help="runs side by side, one core and one XLA thread "
                      "each (bench/workers.py); 1: one run at a time on "
                      "every core")
  parser.add_argument("--items", type=int, default=None,
                      help="accuracy items (default 2000; 100 with --quick)")
  parser.add_argument("--report", default=None,
                      help="markdown to write (default docs/reproduction.md; "
                      "ROOT/reproduction.md with --quick)")
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  root = Path(args.root).resolve()
  if args.quick and args.root == "runs/reproduce":
    root = (ROOT / "runs" / "reproduce_quick").resolve()
  report = Path(args.report or (root / "reproduction.md" if args.quick
                                else ROOT / "docs" / "reproduction.md"))
  started = time.perf_counter()
  runs = plan(root, args.size, args.quick)
  summaries, futures = {}, {}
  cores = workers.Cores(args.workers) if args.workers > 1 else None
  # Submitted in plan order to a FIFO pool: a run's dependency was submitted
  # before it, so it has started by the time the run waits for it.
  with ThreadPoolExecutor(args.workers) as pool:
    for run in runs:
      futures[run.name] = pool.submit(train, run, root, args.size, cores,
                                      futures.get(depends_on(run)))
    for i, run in enumerate(runs, start=1):
      s = summaries[run.name] = futures[run.name].result()
      loss = s.get("student_validation_loss", s["validation_loss"])
      print(f"[{i}/{len(runs)}] {run.name}: validation loss {loss:.4f}, "
            f"{s['wall_s']:.0f} s", flush=True)

  print("=== switch jump (bench/switch_jump.py)", flush=True)
  jump_cache = root / "switch_jump.json"
  if jump_cache.exists():
    jumps = json.loads(jump_cache.read_text())
  else:
    import switch_jump
    jumps = {}
    for run in runs:
      if run.system == "transformer":
        step = switch_step(dataclasses.replace(run, system="two_stage"),
                           args.size)
        jumps[str(run.seed)] = switch_jump.jumps(
            str(run.workdir), step,
            f"configs/reproduce.py:size={args.size},system=two_stage")
    jump_cache.write_text(json.dumps(jumps))

  task_dir = root / "choice_task"
  if not (task_dir / f"{choice_task.TASK}.jsonl").exists():
    config = ov.load(f"configs/reproduce.py:size={args.size},system=iiet")
    choice_task.write(config, task_dir,
                      args.items or (100 if args.quick else ITEMS))
  scores = export_and_score(runs, task_dir)

  print("=== E-IIET decode cost (bench/decode.py's measurement)", flush=True)
  cost_cache = root / "decode_cost.json"
  if cost_cache.exists():
    costs = json.loads(cost_cache.read_text())
  else:
    costs = decode_costs(runs, args.size)
    cost_cache.write_text(json.dumps(costs))

  import reproduction_report
  results = reproduction_report.collect(
      runs, summaries, scores, jumps, costs, args.size, root,
      quick=args.quick, seconds=time.perf_counter() - started)
  (root / "results.json").write_text(json.dumps(results, indent=1))
  reproduction_report.write(results, report,
                            None if args.quick else ROOT / "README.md")
  if not args.quick:   # the numbers behind the committed report
    shutil.copy(root / "results.json", report.parent / "reproduction" /
                "results.json")
  print(f"wrote {report}")
  derived = reproduction_report.derive(results)
  print(json.dumps({name: {"validation_loss": row["loss_mean"],
                           "accuracy": row["acc_mean"]}
                    for name, row in derived["systems"].items()}))


if __name__ == "__main__":
  main()
