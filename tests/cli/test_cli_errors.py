"""Bad command lines fail cleanly: a table of inputs across every command.

Each case must exit with the bad-input code (2, errors.Exit.BAD_INPUT),
print no traceback and exactly one error line (the last; progress lines may
come before it) that names the bad value and a fix, and leave no new
files. The table is docs/errors.md:
regenerate it with `IIET_WRITE_DOCS=1 python -m pytest tests/cli/test_cli_errors.py
-m slow -k table`; without the variable the test checks it is current.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import pytest

from iiet_jax.errors import MEANING, Exit

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "errors.md"
MAIN = [sys.executable, "-m", "iiet_jax.main"]
ENV = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
ENV["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
LM = "--config=configs/lm.py:model=iiet,size=tiny"

# (command line with T = the test's folder, the bad value the error line
# names, a fix it gives). T/file is a file, T/empty an empty folder; T/run
# does not exist; nothing can be created in /proc; the rest is made by
# _setup.
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
    (["--config=T/syntax.py", "--workdir=T/run"], "T/syntax.py",
     "cannot be loaded"),
    (["--config=T/no_get_config.py", "--workdir=T/run"],
     "T/no_get_config.py", "get_config"),
    (["--config=T/bad_import.py", "--workdir=T/run"], "T/bad_import.py",
     "no_such_module"),
    ([LM, "--workdir=T/run", "--config.optimizer.peak_lr=nan"],
     "peak_lr=nan", "finite value"),
    ([LM, "--workdir=T/run", "--config.optimizer.peak_lr=-1"],
     "peak_lr=-1.0", "> 0"),
    ([LM, "--workdir=T/run", "--config.model.iterations=2.5"], "2.5",
     "not a whole number"),
    ([LM, "--workdir=T/run", "--config.model.unroll_iterations=maybe"],
     "maybe", "true or false"),
    ([LM, "--workdir=T/run", "--config.nonfinite=ignore"], "'ignore'",
     "choose one of"),
    ([LM, "--workdir=T/run", "--config.data.eval_batches=0"],
     "eval_batches=0", ">= 1"),
    ([LM, "--workdir=T/run", "--config.batch_size=0"], "batch_size=0",
     ">= 1"),
    ([LM, "--workdir=T/run", "--config.data.validation_fraction=1.5"],
     "validation_fraction=1.5", "strictly"),
    ([LM, "--workdir=T/run", "--config.data.tokenizer=T/bad.model"],
     "T/bad.model", "--config.data.tokenizer"),
    ([LM, "--workdir=T/run", "--config.data.source=files",
      "--config.data.paths=T/empty"], "T/empty", "ending in"),
    ([LM, "--workdir=T/run", "--config.data.source=files",
      "--config.data.paths=T/binary"], "T/binary", ""),
    ([LM, "--workdir=T/dangling"], "T/dangling", "remove the link"),
    ([LM, "--workdir=T/done"], "step 900", "total_steps=900 or more"),
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
    (["influence", "--workdir=T/empty", "--batches=0"], "batches=0",
     ">= 1"),
    # distill
    (["distill", LM, "--workdir=T/run"], "distill.teacher",
     "--config.distill.teacher"),
    (["distill", LM, "--workdir=T/run", "--config.distill.teacher=T/run2",
      "--config.total_steps=3", "--config.optimizer.warmup_steps=1",
      "--config.micro_batches=0"], "micro_batches=0", ">= 1"),
    (["distill", LM, "--workdir=T/run", "--config.distill.teacher=T/nowhere"],
     "T/nowhere", ""),
    (["distill", LM, "--workdir=T/run", "--config.distill.teacher=T/empty",
      "--config.distill.tau=1.5"], "tau=1.5", "[0, 1)"),
    # generate
    (["generate", "--prompt=x"], "--workdir", "iiet generate --help"),
    (["generate", "--workdir=T/run", "--max_new_tokens=ten"], "ten",
     "iiet generate --help"),
    (["generate", "--workdir=T/empty", "--prompt=x", "--top_p=1.5"],
     "top_p=1.5", "(0, 1]"),
    (["generate", "--workdir=T/empty", "--prompt=x", "--temperature=-1"],
     "temperature=-1.0", ">= 0"),
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
    (["import", "--hf=T/bad_hf", "--workdir=T/run"], "T/bad_hf/config.json",
     "not valid JSON"),
    # prepare
    (["prepare", LM], "data.source='stdlib'", "data.source='files'"),
    (["prepare", LM, "--config.data.source=files",
      "--config.data.paths=T/empty"], "T/empty", "ending in"),
    (["prepare", LM, "--config.data.source=files",
      "--config.data.paths=T/file", "--workers=0"], "--workers=0", ">= 1"),
    (["prepare", "--config=configs/mixture.py:root=T/empty",
      "--config.data.mixture.RedPajamaC4.weight=0"],
     "data.mixture.RedPajamaC4.weight=0", "Remove the source"),
    (["prepare", "--config=configs/mixture.py:model=iiet"], "root=DIR",
     "configs/mixture.py:model=iiet,size=tiny,root="),
    (["prepare", "--config=configs/mixture.py:root=T/empty",
      "--config.data.data_dir=T/empty"], "'RedPajamaArXiv'", "correct it"),
    (["--config=configs/mixture.py:root=T/empty", "--workdir=T/run",
      "--config.data.data_dir=T/empty"], "data.mixture", "run `iiet prepare`"),
    # plot
    (["plot"], "--workdir", "iiet plot --help"),
    (["plot", "--workdir=T/empty"], "T/empty", "metrics.jsonl"),
    (["plot", "--workdir=T/logged", "--out=T/file/curves.png"], "T/file",
     "choose another path"),
]
# One case per kind of failure, in the default suite.
FAST_ARGS = ("--config.model.iterations=-1", "--config.total_steps=10",
             "--workdir=T/file", "--tau=1.5", "--dtype=float8",
             "--config.optimizer.peak_lr=nan", "--top_p=1.5", "--workers=0")
FAST = [i for i, (args, _, _) in enumerate(CASES)
        if any(a in args for a in FAST_ARGS)]


def _setup(tmp: Path) -> None:
  (tmp / "file").write_text("not a folder\n")
  (tmp / "empty").mkdir()
  (tmp / "syntax.py").write_text("def get_config(:\n")
  (tmp / "no_get_config.py").write_text("VALUE = 1\n")
  (tmp / "bad_import.py").write_text("import no_such_module\n")
  (tmp / "bad.model").write_bytes(b"not a sentencepiece model")
  (tmp / "binary").mkdir()
  (tmp / "binary" / "blob.txt").write_bytes(bytes(range(256)) * 64)
  (tmp / "dangling").symlink_to(tmp / "nowhere")
  (tmp / "done" / "checkpoints" / "900").mkdir(parents=True)
  (tmp / "bad_hf").mkdir()
  (tmp / "bad_hf" / "config.json").write_text("{")
  (tmp / "logged").mkdir()
  (tmp / "logged" / "metrics.jsonl").write_text(
      '{"step": 1, "split": "train", "loss": 5.0}\n')


def _listing(tmp: Path) -> list[str]:
  return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))


def _first_line(args, tmp: Path) -> tuple[str, subprocess.CompletedProcess]:
  """The command's error line (its only one), and the finished process."""
  argv = [a.replace("T/", f"{tmp}/") for a in args]
  out = subprocess.run(MAIN + argv, cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=300)
  lines = (out.stderr + out.stdout).strip().splitlines()
  errors = [line for line in lines if " error: " in line]
  if len(errors) == 1:
    return errors[0], out
  return (lines[0] if lines else ""), out


def _check(cases, tmp: Path) -> dict[str, str]:
  _setup(tmp)
  before = _listing(tmp)
  with futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(lambda c: _first_line(c[0], tmp), cases))
  seen = {}
  for (args, bad, fix), (line, out) in zip(cases, results):
    # A prepared folder's name ends in a hash of its (scratch) paths.
    shown = re.sub(r"(/prepared/[\w.-]+)-[0-9a-f]{10}", r"\1-HASH",
                   line.replace(str(tmp), "T"))
    where = f"iiet {' '.join(args)}\n{out.stderr[-2000:]}"
    assert out.returncode == Exit.BAD_INPUT, where
    assert "Traceback" not in out.stderr + out.stdout, where
    assert " error: " in line, where
    assert out.stderr.strip().splitlines()[-1] == line, where
    assert bad in shown and fix in shown, (bad, fix, shown)
    seen[" ".join(args)] = shown
  assert _listing(tmp) == before
  return seen


def _doc(seen: dict[str, str]) -> str:
  rows = [f"| `iiet {args}` | {line.replace('|', '/')} |"
          for args, line in seen.items()]
  codes = [f"| {int(code)} | {code.name.lower().replace('_', ' ')} | "
           f"{MEANING[code][0]} | {MEANING[code][1]} |" for code in Exit]
  return "\n".join([
      "# Exit codes and what a bad command line prints", "",
      "Every command exits with one of these codes (`iiet_jax.errors.Exit`);"
      " launch/ and supervisors rely on them: retry only what is worth "
      "retrying.", "",
      "| code | name | means | a supervisor should |", "|---|---|---|---|",
      *codes, "",
      "## Bad input", "",
      "Each input fails before anything is written, with exit code 2 (bad "
      "input) and one error line that "
      "names the bad value and the fix (no traceback). `T` is a scratch "
      "folder. Generated by tests/cli/test_cli_errors.py (`IIET_WRITE_DOCS=1 "
      "python -m pytest tests/cli/test_cli_errors.py -m slow -k table`).", "",
      "| input | error line printed |", "|---|---|", *rows, "",
      "## Faults and signals", "",
      "| what happens | what the run does | exit | tested in |",
      "|---|---|---|---|",
      *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in FAULTS], ""])


# What a run does when something goes wrong while it trains (each row's test
# fails if the behaviour changes).
FAULTS = [
    ("the loss, a gradient norm or a weight stops being finite "
     "(`nonfinite=stop`)", "stops at the next log, evaluation or save "
     "without saving; the newest checkpoint is the last finite one; the "
     "line says which step and what to try", "3",
     "tests/cli/test_fail_safe.py"),
    ("the same with `nonfinite=skip`", "drops non-finite updates (counted "
     "as `skipped_steps`); more than `nonfinite_max_skips` in a row stops "
     "as above", "3", "tests/cli/test_fail_safe.py"),
    ("SIGTERM (a preemption, a time limit)", "saves the next step and "
     "stops; every process of a multi-process run saves the same step",
     "75", "tests/cli/test_fail_safe.py, tests/parallel/test_multihost.py"),
    ("Ctrl-C", "the first saves the next step and stops; a second stops at "
     "once without saving or a traceback", "130",
     "tests/cli/test_fail_safe.py"),
    ("a second train, distill or import on a workdir in use", "refused, "
     "naming the owner's pid and host (run.lock; a dead owner's lock is "
     "taken over)", "2", "tests/cli/test_fail_safe.py"),
    ("a resume with a smaller total_steps", "refused before any work", "2",
     "tests/cli/test_fail_safe.py"),
    ("SIGKILL while a checkpoint commits", "the next run resumes from the "
     "newest complete checkpoint, bit-exactly", "-", "tests/test_faults.py"),
    ("a full disk while checkpointing or exporting", "one line naming the "
     "disk and the fix; no half-written step or folder", "2",
     "tests/test_faults.py, tests/export/test_export_cli.py"),
    ("a killed export's staging folder", "removed by the next export", "-",
     "tests/export/test_export_cli.py"),
    ("a read-only run read by export, score or generate", "works; nothing "
     "is written into the run", "0", "tests/export/test_export_cli.py"),
    ("an imported folder with a NaN or infinite weight", "refused, naming "
     "the tensor and its file", "2", "tests/export/test_export_cli.py"),
]


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
