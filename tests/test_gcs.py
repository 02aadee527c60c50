"""gs:// workdirs against a bucket served on this machine
(tests/gcs_emulator.py): the growing files of storage.Appended, and a whole
run (metrics.jsonl, iiet.log, summary.json, goodput.json, checkpoints,
TensorBoard, the compile cache) written to the bucket and resumed from it,
with the same metrics as the same run in a local folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from iiet_jax import storage
import gcs_emulator

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "iiet-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
  """The bucket's environment (for gcsfs, TensorStore and subprocesses)."""
  port = _free_port()
  # It logs every request: to a file, as a pipe nobody reads would fill.
  log = tmp_path_factory.mktemp("emulator") / "requests.log"
  server = subprocess.Popen(
      [sys.executable, str(ROOT / "tests" / "gcs_emulator.py"), str(port),
       BUCKET], stdout=subprocess.DEVNULL, stderr=log.open("w"))
  deadline = time.monotonic() + 60
  while True:
    try:
      urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
      break
    except OSError:
      assert server.poll() is None, log.read_text()
      assert time.monotonic() < deadline, "the emulator did not start"
      time.sleep(0.1)
  env = gcs_emulator.environment(port)
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)   # gcsfs reads it when a client is first made
  yield env
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value
  server.kill()
  server.wait()


def _fs():
  import gcsfs
  return gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True)


def _read(path: str) -> str:
  with _fs().open(path, "rb") as f:
    return f.read().decode()


def test_appended_in_a_bucket_uploads_keeps_and_resumes(emulator, tmp_path):
  path = f"gs://{BUCKET}/appended/{tmp_path.name}/metrics.jsonl"
  lines = storage.Appended(path, every=0.05)
  lines.write("1\n")
  deadline = time.monotonic() + 30   # the uploader's tick, not a flush
  while not (_fs().exists(path) and _read(path) == "1\n"):
    assert time.monotonic() < deadline, "the line was never uploaded"
    time.sleep(0.05)
  lines.write("2\n")
  lines.flush()
  assert _read(path) == "1\n2\n"
  lines.close()
  # A resumed run appends after what is there.
  again = storage.Appended(path, every=3600)
  again.write("3\n")
  assert _read(path) == "1\n2\n"   # not yet: uploads every hour
  again.close()
  assert _read(path) == "1\n2\n3\n"
  # No temporary object left beside it.
  assert [Path(p).name for p in _fs().ls(os.path.dirname(path[5:]))] == [
      "metrics.jsonl"]


def test_appended_local_file_holds_each_line_at_once(tmp_path):
  lines = storage.Appended(tmp_path / "run" / "iiet.log", every=3600)
  lines.write("a\n")
  assert (tmp_path / "run" / "iiet.log").read_text() == "a\n"
  lines.close()
  storage.Appended(tmp_path / "run" / "iiet.log").write("b\n")
  assert (tmp_path / "run" / "iiet.log").read_text() == "a\nb\n"


def _train(workdir: str, data: Path, cwd: Path, *overrides: str):
  out = subprocess.run(
      [sys.executable, "-m", "iiet_jax.main",
       f"--config={ROOT / 'tests' / 'run_config.py'}:{data}",
       f"--workdir={workdir}", *overrides],
      cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)},
      capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout + out.stderr
  return out


def _losses(text: str) -> dict[int, float]:
  rows = [json.loads(line) for line in text.splitlines()]
  return {r["step"]: r["loss"] for r in rows if r.get("split") == "train"}


@pytest.mark.slow
def test_a_run_in_a_bucket_writes_every_file_there_and_resumes(emulator,
                                                               tmp_path):
  data, cwd = tmp_path / "data", tmp_path / "cwd"
  cwd.mkdir()
  local = tmp_path / "local"
  _train(str(local), data, cwd)
  run = f"gs://{BUCKET}/runs/{tmp_path.name}"
  _train(run, data, cwd)
  assert list(cwd.iterdir()) == []   # nothing in a local "gs:" folder

  fs = _fs()
  names = {p[len(run) - 4:] for p in fs.find(run[5:])}
  for name in ("metrics.jsonl", "iiet.log", "summary.json", "goodput.json",
               "checkpoints/8/commit_success.txt"):
    assert name in names, sorted(names)
  assert _losses(_read(f"{run}/metrics.jsonl")) == pytest.approx(
      _losses((local / "metrics.jsonl").read_text()), abs=1e-6)
  summary = json.loads(_read(f"{run}/summary.json"))
  assert summary["steps"] == summary["total_steps"] == 8
  assert "CheckpointManager" in _read(f"{run}/iiet.log")
  (events,) = [n for n in names if n.startswith("tensorboard/events.")]
  assert b"train/loss" in fs.cat(f"{run[5:]}/{events}")
  assert fs.find(f"{BUCKET}/iiet_jax/compile_cache"), (
      "compile_cache_dir=auto puts a gs:// run's cache in its bucket")

  # Resumed from the bucket's checkpoint: four more steps appended.
  _train(run, data, cwd, "--config.total_steps=12")
  text = _read(f"{run}/metrics.jsonl")
  assert sorted(_losses(text)) == list(range(1, 13))
  assert any("resumed from step 8" in json.loads(line).get("event", "")
             for line in text.splitlines())
  assert json.loads(_read(f"{run}/summary.json"))["steps"] == 12
  assert list(cwd.iterdir()) == []


def test_a_workdir_in_a_missing_bucket_is_refused_by_name(emulator):
  from iiet_jax import preflight
  assert str(preflight.check_workdir(f"gs://{BUCKET}/runs/new")) == (
      f"gs://{BUCKET}/runs/new")
  with pytest.raises(preflight.WorkdirError) as refused:
    preflight.check_workdir("gs://no-such-bucket/runs/a")
  assert str(refused.value) == (
      "--workdir=gs://no-such-bucket/runs/a: the bucket gs://no-such-bucket "
      "does not exist, or this account cannot see it; create it (gcloud "
      "storage buckets create gs://no-such-bucket) or choose another "
      "--workdir.")
