"""Bad command lines fail cleanly: a table of inputs across every command.

Each case must exit non-zero, print no traceback, name the bad value and a
fix in its first line, and leave no new files. The table is docs/errors.md:
regenerate it with `IIET_WRITE_DOCS=1 python -m pytest tests/cli/test_cli_errors.py
-m slow -k table`; without the variable the test checks it is current.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "errors.md"
MAIN = [sys.executable, "-m", "iiet_jax.main"]
ENV = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
ENV["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
LM = "--config=configs/lm.py:model=iiet,size=tiny"

# (command line with T = the test's folder, the bad value the first line
# names, a fix it gives). T/file is a file, T/empty an empty folder; T/run
# does not exist; nothing can be created in /proc.
CASES = [
    # train
    ([LM, "--workdir=T/run", "--config.model.iterations=-1"], "-1", ">= 0"),
    ([LM, "--workdir=T/run", "--config.model.iterations=3,1"], "2 entries",
     "one count per layer"),
    ([LM, "--workdir=T/run", "--config.model.iterations=3,x"], "3,x",
     "e.g. --config.model.iterations=3,1,1,1"),
    ([LM, "--workdir=T/run", "--config.mesh.data=3"], "3", "mesh"),
    ([LM, "--workdir=T/run", "--config.micro_batches=3"], "micro_batches=3",
     "multiple"),
    ([LM, "--workdir=T/run", "--config.total_steps=10"], "total_steps=10",
     "lower --config.optimizer.warmup_steps"),
    ([LM, "--workdir=T/run", "--config.seq_len=512"], "seq_len=512",
     "raise --config.model.max_seq_len"),
    ([LM, "--workdir=T/run", "--config.model.num_heads=3"], "num_heads=3",
     "set num_heads to a divisor"),
    ([LM, "--workdir=T/run", "--config.model.arch=nope"], "'nope'",
     "choose one of"),
    ([LM, "--workdir=T/run", "--config.switch_at=1.5"], "switch_at=1.5",
     "[0, 1)"),
    ([LM, "--workdir=T/run", "--config.data.source=web"], "'web'",
     "choose one of"),
    ([LM, "--workdir=T/run", "--config.model.iteratons=2"],
     "model.iteratons", "model.iterations"),
    ([LM, "--workdir=T/run", "--config.total_steps=many"], "many",
     "--config.total_steps"),
    (["--config=configs/lm.py:model=nope", "--workdir=T/run"], "'nope'",
     "choose one of"),
    (["--config=configs/nope.py", "--workdir=T/run"], "configs/nope.py",
     "no config file at"),
    ([LM, "--workdir=T/file"], "T/file", "give a folder"),
    ([LM, "--workdir=/proc/iiet/run"], "/proc", "choose a writable"),
    ([LM], "--workdir", "--help"),
    (["--workdir=T/run"], "--config", "e.g. --config=configs/lm.py"),
    (["trian", LM, "--workdir=T/run"], "'trian'", "choose one of"),
    ([LM, "--workdir=T/run", "--tau=0.1"], "'tau'", "iiet train --help"),
    # sweep
    (["sweep", LM, "--workdir=T/run", "--sweep_dry_run",
      "--config.totl_steps=3"], "totl_steps", "total_steps"),
    # influence
    (["influence", "--workdir=T/empty", "--tau=1.5"], "tau=1.5", "[0, 1)"),
    (["influence", "--workdir=T/empty", "--budget=2"], "budget=2", "(0, 1]"),
    (["influence", "--workdir=T/run"], "T/run", "give a run's workdir"),
    (["influence", "--workdir=T/empty"], "T/empty", "train a run there"),
    # distill
    (["distill", LM, "--workdir=T/run"], "distill.teacher",
     "--config.distill.teacher"),
    (["distill", LM, "--workdir=T/run", "--config.distill.teacher=T/run2",
      "--config.total_steps=3", "--config.optimizer.warmup_steps=1",
      "--config.micro_batches=0"], "micro_batches=0", ">= 1"),
    # generate
    (["generate", "--prompt=x"], "--workdir", "iiet generate --help"),
    (["generate", "--workdir=T/run", "--max_new_tokens=ten"], "ten",
     "iiet generate --help"),
    # export
    (["export", "--workdir=T/empty"], "--out", "iiet export --help"),
    (["export", "--workdir=T/empty", "--out=T/hf", "--dtype=float8"],
     "float8", "float32"),
    (["export", "--workdir=T/run", "--out=T/hf"], "T/run",
     "give a run's workdir"),
    # score
    (["score", "--workdir=T/empty"], "--input", "iiet score --help"),
    (["score", "--workdir=T/empty", "--input=T/missing.txt"],
     "T/missing.txt", "is not a file"),
    # import
    (["import", "--workdir=T/run"], "--hf", "iiet import --help"),
    (["import", "--hf=T/empty", "--workdir=T/run"], "T/empty",
     "config.json"),
    # plot
    (["plot"], "--workdir", "iiet plot --help"),
    (["plot", "--workdir=T/empty"], "T/empty", "metrics.jsonl"),
]
FAST = [0, 5, 15, 22, 30]   # one per kind of failure, in the default suite


def _setup(tmp: Path) -> None:
  (tmp / "file").write_text("not a folder\n")
  (tmp / "empty").mkdir()


def _listing(tmp: Path) -> list[str]:
  return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))


def _first_line(args, tmp: Path) -> tuple[str, subprocess.CompletedProcess]:
  argv = [a.replace("T/", f"{tmp}/") for a in args]
  out = subprocess.run(MAIN + argv, cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=120)
  lines = (out.stderr + out.stdout).strip().splitlines()
  return (lines[0] if lines else ""), out


def _check(cases, tmp: Path) -> dict[str, str]:
  _setup(tmp)
  before = _listing(tmp)
  with futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(lambda c: _first_line(c[0], tmp), cases))
  seen = {}
  for (args, bad, fix), (line, out) in zip(cases, results):
    shown = line.replace(str(tmp), "T")
    where = f"iiet {' '.join(args)}\n{out.stderr[-2000:]}"
    assert out.returncode != 0, where
    assert "Traceback" not in out.stderr + out.stdout, where
    assert " error: " in line, where
    assert bad in shown and fix in shown, (bad, fix, shown)
    seen[" ".join(args)] = shown
  assert _listing(tmp) == before
  return seen


def _doc(seen: dict[str, str]) -> str:
  rows = [f"| `iiet {args}` | {line.replace('|', '/')} |"
          for args, line in seen.items()]
  return "\n".join([
      "# What a bad command line prints", "",
      "Each input fails before anything is written, with one line that "
      "names the bad value and the fix (no traceback). `T` is a scratch "
      "folder. Generated by tests/cli/test_cli_errors.py (`IIET_WRITE_DOCS=1 "
      "python -m pytest tests/cli/test_cli_errors.py -m slow -k table`).", "",
      "| input | first line printed |", "|---|---|", *rows, ""])


def _documented() -> dict[str, str]:
  rows = {}
  for row in DOC.read_text().splitlines():
    if row.startswith("| `iiet "):
      args, line = row[len("| `iiet "):].split("` | ", 1)
      rows[args] = line.rstrip(" |")
  return rows


@pytest.mark.slow
def test_table_of_bad_inputs(tmp_path):
  assert len(CASES) >= 30
  seen = _check(CASES, tmp_path)
  if os.environ.get("IIET_WRITE_DOCS") == "1":
    DOC.write_text(_doc(seen))
  assert DOC.read_text() == _doc(seen), "rerun with IIET_WRITE_DOCS=1"


def test_fast_subset_fails_cleanly_as_documented(tmp_path):
  seen = _check([CASES[i] for i in FAST], tmp_path)
  documented = _documented()
  for args, line in seen.items():
    assert documented.get(args) == line.replace("|", "/"), args


def test_help_lists_commands_and_only_the_commands_flags():
  top = subprocess.run(MAIN + ["--help"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=120)
  assert top.returncode == 0
  for command in ("train", "sweep", "influence", "distill", "generate",
                  "export", "score", "import", "plot"):
    assert f"\n  {command} " in top.stdout
  export = subprocess.run(MAIN + ["export", "--help"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
  assert "--out" in export.stdout and "--dtype" in export.stdout
  assert "--tau" not in export.stdout and "--prompt" not in export.stdout


def test_per_layer_iterations_from_the_command_line(tmp_path):
  # Both spellings parse; the run then stops at the (later) step check.
  for value in ("3,1,1,1", "(3,1,1,1)"):
    line, out = _first_line([LM, f"--workdir={tmp_path}/run",
                             f"--config.model.iterations={value}",
                             "--config.total_steps=10"], tmp_path)
    assert line.startswith("Config error: total_steps=10"), out.stderr
  assert not (tmp_path / "run").exists()


def test_readers_fall_back_past_a_damaged_step(tmp_path, caplog):
  from iiet_jax import checkpoint
  for step in (2, 4):
    (tmp_path / str(step)).mkdir()
  (tmp_path / "4" / "_CHECKPOINT_METADATA").write_text("")

  def read(step):
    if step == 4:
      raise ValueError("Expecting value: line 1 column 1 (char 0)")
    return "ok"

  assert checkpoint.newest_readable(tmp_path, [2, 4], read) == (2, "ok", [4])
  assert "checkpoint step 4" in caplog.text
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"_CHECKPOINT_METADATA: Expecting value"):
    checkpoint.newest_readable(tmp_path, [4], read)
