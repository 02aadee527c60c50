"""Scores exported runs on the offline choice task with lm-evaluation-harness.

  python bench/lm_eval_runs.py --task_dir=DIR RUN_WORKDIR [RUN_WORKDIR ...]

Each RUN_WORKDIR holds its export in `hf/` (`iiet export`); the task folder
is bench/choice_task.py's. One process loads lm-eval once and evaluates the
exports one after another (float32, CPU), writing `choice.json` (acc,
acc_norm and their standard errors) into each run. Called by
bench/reproduce.py.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--task_dir", required=True)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("runs", nargs="+")
  args = parser.parse_args()
  import lm_eval
  from lm_eval.tasks import TaskManager
  sys_path = Path(args.task_dir).resolve()
  task = next(sys_path.glob("*.yaml")).stem
  os.chdir(sys_path)   # the task's data_files path is relative to it
  manager = TaskManager(include_path=str(sys_path))
  for run in args.runs:
    export = Path(run).resolve() / "hf"
    result = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={export},trust_remote_code=True,"
        f"dtype=float32", tasks=[task], task_manager=manager, device="cpu",
        batch_size=args.batch_size, log_samples=False, bootstrap_iters=1000)
    metrics = result["results"][task]
    out = {"task": task, "items": result["n-samples"][task]["effective"],
           "acc": metrics["acc,none"], "acc_stderr": metrics["acc_stderr,none"],
           "acc_norm": metrics["acc_norm,none"],
           "acc_norm_stderr": metrics["acc_norm_stderr,none"]}
    (Path(run) / "choice.json").write_text(json.dumps(out))
    print(f"{run}: acc {out['acc']:.4f} +- {out['acc_stderr']:.4f}",
          flush=True)


if __name__ == "__main__":
  main()
