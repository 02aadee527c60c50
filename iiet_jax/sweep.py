"""Sweeps: one run per override dict from the config file's `get_sweep()`.

  iiet sweep --config=configs/lm.py:model=iiet,size=tiny --workdir=runs/sweep
  iiet sweep ... --sweep_dry_run    # print one command per run, run nothing

Runs go sequentially in subprocesses, each in `<workdir>/<run name>`; a run
whose workdir already holds a finished summary is resumed, i.e. skipped
quickly. On a cluster, print the commands and submit each as its own job.
At the end a table of every run's summary is printed.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from typing import Sequence

from etils import epath

from iiet_jax import overrides as ov
from iiet_jax.errors import Exit


def run_name(overrides: dict) -> str:
  name = ",".join(f"{k}={v}" for k, v in overrides.items()) or "base"
  return re.sub(r"[^\w.,=+-]+", "_", name)


def expand(spec: str, argv_extra: Sequence[str]) -> list[dict]:
  config, module = ov.load_config_file(spec)
  if not hasattr(module, "get_sweep"):
    raise ov.OverrideError(f"--config={spec}: the file defines no "
                           f"get_sweep(); add one returning a list of "
                           f"override dicts.")
  arg = spec.partition(":")[2]
  runs = module.get_sweep(arg) if arg else module.get_sweep()
  if not runs:
    raise ov.OverrideError(f"get_sweep() of {spec} returned no runs.")
  ov.check_keys(config, ov.override_keys(argv_extra))
  for run in runs:
    ov.check_keys(config, list(run))
  names = [run_name(r) for r in runs]
  if len(set(names)) != len(names):
    raise ov.OverrideError(f"get_sweep() of {spec} repeats a run: {names}.")
  return runs


def commands(spec: str, workdir: str, runs: list[dict],
             argv_extra: Sequence[str]) -> list[tuple[str, list[str]]]:
  out = []
  for run in runs:
    name = run_name(run)
    out.append((name, [sys.executable, "-m", "iiet_jax.main", "train",
                       f"--config={spec}",
                       f"--workdir={epath.Path(workdir) / name}",
                       *argv_extra, *ov.override_args(run)]))
  return out


def table(workdir: str, names: Sequence[str], codes: dict[str, int]) -> str:
  lines = [f"{'run':40s} {'exit':>4s} {'steps':>6s} {'train loss':>10s} "
           f"{'val loss':>9s} {'tokens/s':>9s}"]
  for name in names:
    path = epath.Path(workdir) / name / "summary.json"
    s = json.loads(path.read_text()) if path.exists() else {}
    fmt = lambda v, f: format(v, f) if isinstance(v, (int, float)) else "-"
    lines.append(f"{name[:40]:40s} {codes.get(name, '-')!s:>4s} "
                 f"{fmt(s.get('steps'), 'd'):>6s} "
                 f"{fmt(s.get('train_loss'), '.4f'):>10s} "
                 f"{fmt(s.get('validation_loss'), '.4f'):>9s} "
                 f"{fmt(s.get('tokens_per_s'), ',.0f'):>9s}")
  return "\n".join(lines)


def sweep(spec: str, workdir: str, argv_extra: Sequence[str],
          dry_run: bool = False) -> int:
  """Runs (or prints) every run of the sweep; returns the worst exit code."""
  runs = expand(spec, argv_extra)
  cmds = commands(spec, workdir, runs, argv_extra)
  if dry_run:
    for _, cmd in cmds:
      print(" ".join(cmd))
    return 0
  codes = {}
  # Ctrl-C reaches the run too (one process group): the run saves and
  # exits 130, and the sweep stops after it instead of killing it mid-save.
  previous = signal.signal(signal.SIGINT, lambda *_: None)
  try:
    for i, (name, cmd) in enumerate(cmds, start=1):
      print(f"=== sweep run {i}/{len(cmds)}: {name}", flush=True)
      codes[name] = subprocess.run(cmd).returncode
      if codes[name] == Exit.INTERRUPTED:
        print(f"sweep stopped by Ctrl-C during {name}; run the command "
              f"again to resume it and go on.", flush=True)
        break
  finally:
    signal.signal(signal.SIGINT, previous)
  print(table(workdir, [n for n, _ in cmds], codes))
  if Exit.INTERRUPTED in codes.values():
    return Exit.INTERRUPTED
  return max(codes.values())
