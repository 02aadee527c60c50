"""The command line end to end: the README's main job, errors, signals."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training import read_metrics

ROOT = Path(__file__).resolve().parents[2]
# One CPU device, as on a user's machine (conftest gives this process eight).
ENV = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0"}
MAIN = [sys.executable, "-m", "iiet_jax.main"]


def _run(args, timeout=300):
  return subprocess.run(MAIN + args, cwd=ROOT, env=ENV, capture_output=True,
                        text=True, timeout=timeout)


def test_main_job_two_stage_on_the_stdlib_corpus(tmp_path):
  # A relative workdir, as in the README's command.
  relative = os.path.relpath(tmp_path / "run", ROOT)
  out = _run(["--config=configs/lm.py:model=iiet,size=tiny",
              f"--workdir={relative}",
              "--config.model.iterations=1", "--config.total_steps=8",
              "--config.optimizer.warmup_steps=2", "--config.log_every=2",
              "--config.eval_every=4", "--config.checkpoint.every=4",
              f"--config.data.data_dir={tmp_path}", "--config.data.max_files=60",
              "--config.data.validation_fraction=0.2",
              "--config.data.tokenizer_sample_chars=300000"])
  assert out.returncode == 0, out.stderr[-3000:]
  assert "phases     transformer for steps 1-6, then iiet for steps 7-8" \
      in out.stdout
  assert "[step 6] switched to iiet at step 6" in out.stdout
  assert "spm_bpe_2048.model" in out.stdout
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["steps"] == 8 and not summary["preempted"]
  losses, _ = read_metrics(tmp_path / "run")
  assert abs(losses[2][0] - math.log(2048)) < 0.6
  assert summary["validation_loss"] < math.log(2048)
  assert "validation loss" in out.stdout and "tokens/s" in out.stdout
  assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()
                if p.name.isdigit()) == ["4", "6", "8"]

  # The finished run reads back: influence of its iterations, generation.
  out = _run(["influence", f"--workdir={relative}", "--batches=1",
              "--tau=0.0"])
  assert out.returncode == 0, out.stderr[-3000:]
  assert "selection  tau=0: r_t = [1, 1, 1, 1]" in out.stdout
  assert "block evaluations per token 8 (teacher 8)" in out.stdout
  result = json.loads((tmp_path / "run" / "influence.json").read_text())
  assert len(result["state_change"]) == 4
  from matplotlib import image
  png = image.imread(tmp_path / "run" / "influence.png")
  assert png.shape == (300, 330, 4)  # report.heatmap: 1 iteration x 4 layers
  out = _run(["generate", f"--workdir={relative}", "--prompt=def main(",
              "--max_new_tokens=8", "--temperature=0.8", "--seed=1"])
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.startswith("def main(")


def test_unknown_override_key_lists_the_closest(tmp_path):
  out = _run(["--config=configs/lm.py:model=iiet,size=tiny",
              f"--workdir={tmp_path}", "--config.model.iteratons=2"])
  assert out.returncode != 0
  assert "--config.model.iteratons: no such config key" in out.stderr
  assert "model.iterations" in out.stderr


def test_bad_model_config_is_named(tmp_path):
  out = _run(["--config=configs/lm.py:model=iiet,size=tiny",
              f"--workdir={tmp_path}", "--config.model.num_heads=3"])
  assert out.returncode != 0
  assert "not divisible by model.num_heads=3" in out.stderr


def test_missing_corpus_is_named(tmp_path):
  missing = tmp_path / "no_corpus"
  out = _run(["--config=configs/lm.py:model=iiet,size=tiny",
              f"--workdir={tmp_path / 'run'}", "--config.data.source=files",
              f"--config.data.paths=('{missing}',)",
              f"--config.data.data_dir={tmp_path}"])
  assert out.returncode != 0
  assert f"Data error: Corpus path {missing} does not exist" in out.stderr


def _config(tmp_path, arch="iiet"):
  return f"--config=tests/run_config.py:{tmp_path / 'data'},{arch}"


def _train_until(tmp_path, workdir, step, sig):
  """Starts a run, sends `sig` once `step` is logged; returns the exit code."""
  proc = subprocess.Popen(MAIN + [_config(tmp_path), f"--workdir={workdir}",
                                  "--config.total_steps=10"],
                          cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and step in read_metrics(workdir)[0]:
      proc.send_signal(sig)
      break
    time.sleep(0.05)
  _, err = proc.communicate(timeout=240)
  return proc.returncode, err


# About 90 s; tests/test_faults.py and tests/parallel/test_multihost.py
# cover a kill mid-checkpoint and SIGTERM in the default suite's time.
@pytest.mark.slow
def test_killed_and_terminated_runs_resume_exactly(tmp_path):
  base = _run([_config(tmp_path), f"--workdir={tmp_path / 'full'}",
               "--config.total_steps=10"])
  assert base.returncode == 0, base.stderr[-3000:]
  full, _ = read_metrics(tmp_path / "full")

  code, _ = _train_until(tmp_path, tmp_path / "killed", 5, signal.SIGKILL)
  assert code == -signal.SIGKILL
  code, err = _train_until(tmp_path, tmp_path / "termed", 3, signal.SIGTERM)
  assert code == 75, err[-3000:]   # errors.Exit.PREEMPTED: saved, resumable
  _, events = read_metrics(tmp_path / "termed")
  stopped = [e for e in events if e["event"].startswith("SIGTERM")]
  assert len(stopped) == 1
  assert (tmp_path / "termed" / "checkpoints" / str(stopped[0]["step"])
          ).is_dir()

  for name in ("killed", "termed"):
    again = _run([_config(tmp_path), f"--workdir={tmp_path / name}",
                  "--config.total_steps=10"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step" in again.stdout
    losses, _ = read_metrics(tmp_path / name)
    assert sorted(losses) == list(range(1, 11))
    for step, values in losses.items():
      # Steps trained twice (after the last checkpoint) agree as well.
      assert values == [full[step][0]] * len(values), (name, step)


def test_iiad_commands_on_a_token_record_run(tmp_path):
  teacher = _run([_config(tmp_path), f"--workdir={tmp_path}/teacher",
                  "--config.total_steps=2"])
  assert teacher.returncode == 0, teacher.stderr[-3000:]
  out = _run(["distill", _config(tmp_path), f"--workdir={tmp_path}/student",
              f"--config.distill.teacher={tmp_path}/teacher",
              "--config.distill.budget=0.5", "--dry_run"])
  assert out.returncode == 0, out.stderr[-3000:]
  assert "block evaluations per token 4 (teacher 6)" in out.stdout
  assert not (tmp_path / "student").exists()  # nothing trained
  bad = _run(["influence", f"--workdir={tmp_path}/teacher", "--tau=1.5"])
  assert bad.returncode != 0 and "tau=1.5 is outside" in bad.stderr
  gen = _run(["generate", f"--workdir={tmp_path}/teacher", "--prompt=x"])
  assert gen.returncode != 0 and "no tokenizer" in gen.stderr
  pc = _run([_config(tmp_path, "pcformer"), f"--workdir={tmp_path}/pc",
             "--config.total_steps=2"])
  assert pc.returncode == 0, pc.stderr[-3000:]
  out = _run(["influence", f"--workdir={tmp_path}/pc"])
  assert out.returncode != 0 and "apply to IIET models" in out.stderr


def test_workdir_of_another_architecture_is_refused(tmp_path):
  first = _run([_config(tmp_path, "transformer"), f"--workdir={tmp_path}/w",
                "--config.total_steps=2"])
  assert first.returncode == 0, first.stderr[-3000:]
  out = _run([_config(tmp_path, "pcformer"), f"--workdir={tmp_path}/w",
              "--config.total_steps=2"])
  assert out.returncode != 0
  assert "Checkpoint error:" in out.stderr and "'transformer'" in out.stderr


def test_sweep_dry_run_lists_one_command_per_run(tmp_path):
  out = _run(["sweep", _config(tmp_path), f"--workdir={tmp_path}/sweep",
              "--sweep_dry_run", "--config.total_steps=3"])
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 2
  assert f"--workdir={tmp_path}/sweep/model.iterations=1" in lines[0]
  assert lines[0].endswith("--config.total_steps=3 --config.model.iterations=1")
  assert "--config.model.iterations=2 --config.seed=3" in lines[1]
  bad = _run(["sweep", _config(tmp_path), f"--workdir={tmp_path}/s",
              "--sweep_dry_run", "--config.totl_steps=3"])
  assert bad.returncode != 0 and "Closest valid keys: total_steps" in bad.stderr


@pytest.mark.slow
def test_sweep_runs_every_run_and_tabulates(tmp_path):
  out = _run(["sweep", _config(tmp_path), f"--workdir={tmp_path}/sweep",
              "--config.total_steps=2"], timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  table = out.stdout[out.stdout.rindex("\nrun ") + 1:].splitlines()
  assert len(table) == 3
  for row, name in zip(table[1:], ["model.iterations=1",
                                   "model.iterations=2,seed=3"]):
    assert row.startswith(name) and row.split()[1:3] == ["0", "2"]
    summary = json.loads((tmp_path / "sweep" / name / "summary.json")
                         .read_text())
    assert f"{summary['validation_loss']:.4f}" in row


def test_the_command_line_starts_jax_distributed_before_any_device(tmp_path):
  # What every launcher does (IIET_COORDINATOR & co., or IIET_DISTRIBUTED):
  # a check that touched a device first made jax.distributed refuse to start.
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(ENV, IIET_COORDINATOR=f"127.0.0.1:{port}", IIET_NUM_PROCESSES="1",
             IIET_PROCESS_ID="0")
  out = subprocess.run(
      MAIN + [f"--config=tests/run_config.py:{tmp_path / 'data'},transformer",
              f"--workdir={tmp_path / 'run'}", "--config.total_steps=2",
              "--config.compile_cache_dir="],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads((tmp_path / "run" / "summary.json").read_text())[
      "steps"] == 2
