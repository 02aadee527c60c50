"""Faults: a kill mid-checkpoint, a full disk, a damaged corpus shard.

The whole-run cases run the command line in a subprocess
(tests/fault_worker.py injects the fault) on the counting corpus of
tests/run_config.py: a two-layer Transformer++, 8 steps, checkpoints every 2.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grain
import jax
import numpy as np
import pytest

from iiet_jax import checkpoint as ckpt_lib
from iiet_jax import stages
from iiet_jax import storage
from iiet_jax.data import corpus
from iiet_jax.data import shards
from iiet_jax.data import sources
from training import NoData, read_metrics, run_config

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "fault_worker.py"
# No re-exec for huge pages: the worker's fault must stay in its process.
ENV = {**os.environ, "IIET_HUGE_PAGES": "0"}


def _train_args(data: Path, workdir: Path) -> list[str]:
  return ["train", f"--config={ROOT}/tests/run_config.py:{data},transformer",
          f"--workdir={workdir}"]


def _worker(fault: str, step: int, data: Path, workdir: Path) -> list[str]:
  return [sys.executable, str(WORKER), fault, str(step), "--",
          *_train_args(data, workdir)]


def _assert_same_losses(run: Path, reference: dict[int, list[float]]):
  """Every loss `run` ever wrote (also before a crash) is the reference's."""
  losses, _ = read_metrics(run)
  assert sorted(losses) == sorted(reference)
  for step, written in losses.items():
    assert written == reference[step] * len(written), step


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run's losses, {step: [loss]}, and its data dir."""
  root = tmp_path_factory.mktemp("reference")
  stages.train(run_config(root / "data", "transformer"), root / "run")
  return read_metrics(root / "run")[0], root / "data"


@pytest.mark.slow
def test_sigkill_while_a_checkpoint_commits_resumes_exactly(tmp_path,
                                                            reference):
  """Killed with step 4's checkpoint written but not yet committed (the
  moment a crash is most likely to leave something that looks whole), the
  rerun resumes from step 2 and writes the uninterrupted run's losses bit
  for bit: the same XLA program on the same data and state is deterministic
  on the CPU, and the worker sets this process's matmul precision."""
  losses, data = reference
  workdir = tmp_path / "run"
  workdir.mkdir()
  with open(tmp_path / "stderr", "w") as err:
    proc = subprocess.Popen(_worker("commit_hangs", 4, data, workdir),
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=err)
  try:
    deadline = time.monotonic() + 300
    while not (workdir / "commit_hangs").exists():
      assert proc.poll() is None, (tmp_path / "stderr").read_text()[-3000:]
      assert time.monotonic() < deadline, "step 4's commit never started"
      time.sleep(0.1)
    pending = list((workdir / "checkpoints").glob("4.orbax-checkpoint-tmp*"))
    assert pending and (pending[0] / "state").is_dir()
  finally:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert ckpt_lib.Checkpoints(workdir / "checkpoints").steps() == [2]

  summary = stages.train(run_config(data, "transformer"), workdir)
  assert summary["steps"] == 8 and not summary["preempted"]
  _, events = read_metrics(workdir)
  assert [e["event"] for e in events if "resumed" in e["event"]] == [
      f"resumed from step 2 (transformer) in {workdir / 'checkpoints'}"]
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [
      "2", "4", "6", "8"]  # the half-written step is gone
  _assert_same_losses(workdir, losses)


def _can_mount_tmpfs(where: Path) -> bool:
  where.mkdir(parents=True, exist_ok=True)
  return subprocess.run(
      ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs tmpfs '{where}'"],
      capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["disk_fills", "file_size_limit"])
def test_full_disk_while_checkpointing(tmp_path, reference, fault):
  """A clear error, the previous checkpoint intact, a rerun resumes from it.

  `disk_fills` is a real full disk: the checkpoint directory is a tmpfs of
  its own, mounted in a user and mount namespace (`unshare -rm`, no root
  needed), and a file takes all its space once step 2 is complete; after
  the error the file is deleted (the user frees space) and the same command
  runs again in that namespace. Where user namespaces are not allowed,
  `file_size_limit` still runs: RLIMIT_FSIZE makes the same writes fail
  with EFBIG, which is what a quota or a size-limited volume does, and the
  rerun has no limit.
  """
  losses, data = reference
  workdir = tmp_path / "run"
  checkpoints = workdir / "checkpoints"
  failed, again = tmp_path / "failed", tmp_path / "again"
  command = " ".join(f"'{a}'" for a in _worker(fault, 4, data, workdir))
  rerun = " ".join(f"'{a}'" for a in _worker("none", 0, data, workdir))
  script = (f"{command} >{failed}.out 2>{failed}.err; echo $? >{failed}.rc; "
            f"rm -f '{checkpoints}/filler'; "
            f"{rerun} >{again}.out 2>{again}.err; echo $? >{again}.rc")
  if fault == "disk_fills":
    if not _can_mount_tmpfs(checkpoints):
      pytest.skip("no user namespaces here to mount a tmpfs")
    script = (f"mount -t tmpfs -o size=16m tmpfs '{checkpoints}' && "
              + script)
    argv = ["unshare", "-rm", "sh", "-c", script]
  else:
    argv = ["sh", "-c", script]
  subprocess.run(argv, cwd=ROOT, env=ENV, check=True, timeout=600)

  stderr = Path(f"{failed}.err").read_text()
  # errors.Exit.BAD_INPUT: the disk, not the run, needs fixing
  assert Path(f"{failed}.rc").read_text().strip() == "2", stderr[-3000:]
  reason = ("the disk is full (No space left on device)"
            if fault == "disk_fills" else "file size limit")
  last = stderr.strip().splitlines()[-1]
  assert last.startswith(f"Checkpoint error: Cannot write checkpoint step 4 "
                         f"in {checkpoints}: "), last
  assert reason in last and "it resumes from step 2" in last, last
  assert "CheckpointWriteError" not in stderr  # not a traceback of ours
  assert Path(f"{again}.rc").read_text().strip() == "0", (
      Path(f"{again}.err").read_text()[-3000:])
  _, events = read_metrics(workdir)
  said = [e["event"] for e in events]
  assert f"resumed from step 2 (transformer) in {checkpoints}" in said
  assert not any("unreadable" in e for e in said)  # step 2 was intact
  _assert_same_losses(workdir, losses)


@contextlib.contextmanager
def _file_size_limit(limit: int):
  """Writes past `limit` bytes fail with EFBIG (SIGXFSZ would kill us)."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, handler)


def test_failed_background_write_is_a_clear_error(tmp_path):
  """The state's file outgrows the limit in Orbax's background thread; the
  error names the step, the directory and the fix, and the step before
  stays readable."""
  directory = tmp_path / "checkpoints"
  state = {"w": jax.numpy.arange(48 * 1024, dtype=jax.numpy.float32)}
  checkpoints = ckpt_lib.Checkpoints(directory)
  checkpoints.save(1, state, NoData(), {}, {"phase": "one"})
  checkpoints.wait()
  with _file_size_limit(64 * 1024):
    checkpoints.save(2, state, NoData(), {}, {"phase": "one"})
    with pytest.raises(ckpt_lib.CheckpointWriteError) as err:
      checkpoints.wait()
  checkpoints.close()  # quiet: the failure was reported
  assert str(err.value) == (
      f"Cannot write checkpoint step 2 in {directory}: a file grew past "
      f"this process's file size limit (ulimit -f) (File too large). Raise "
      f"the limit (ulimit -f unlimited), then run the same command again: "
      f"it resumes from step 1, the newest complete checkpoint.")
  again = ckpt_lib.Checkpoints(directory)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state)
  restored = again.restore(abstract, NoData())
  assert again.steps() == [1]  # step 2's temporary directory is no step
  again.close()
  assert restored.step == 1 and not restored.skipped
  assert (np.asarray(restored.state["w"]) == np.asarray(state["w"])).all()


def test_write_failure_is_found_in_any_form():
  tensorstore = ValueError(
      'RESOURCE_EXHAUSTED: Error writing "params.embedding" in OCDBT '
      'database at local file "/ck/4.orbax-checkpoint-tmp/state/": Failed '
      "to write 73585 bytes to file 9: No space left on device "
      "[os_error_code='28']")
  assert storage.write_failure(tensorstore).code == errno.ENOSPC
  try:
    try:
      raise OSError(errno.EDQUOT, "Disk quota exceeded")
    except OSError as err:
      raise RuntimeError("background save failed") from err
  except RuntimeError as chained:
    found = storage.write_failure(chained)
  assert found.code == errno.EDQUOT and "quota" in found.reason
  assert storage.write_failure(OSError(errno.EFBIG, "File too large")).code \
      == errno.EFBIG
  assert storage.write_failure(ValueError("shape mismatch")) is None
  assert storage.write_failure(OSError(errno.ENOENT, "No such file")) is None


def _prepared(root: Path, data_dir: Path):
  """A small text corpus prepared as ArrayRecord; its train shard's path."""
  if not root.exists():
    root.mkdir(parents=True)
    for i in range(40):
      (root / f"doc{i}.txt").write_text(
          f"document {i}: " + " ".join(map(str, range(i))) + "\n")
  builder = corpus.prepare(corpus.text_corpus_builder(
      root, data_dir, validation_fraction=0.3))
  shard, = (f.filename for f in builder.info.splits["train"].file_instructions)
  return builder, Path(shard)


def _records(source) -> list:
  return [source[i] for i in range(len(source))]


@pytest.mark.parametrize("damage", ["truncated", "replaced"])
def test_damaged_shard_of_a_prepared_corpus_is_named_at_open(tmp_path,
                                                             damage):
  builder, shard = _prepared(tmp_path / "docs", tmp_path / "tfds")
  intact = _records(corpus.open_split(builder, "train"))
  if damage == "truncated":  # a copy or download that stopped half-way
    shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])
    said = "is truncated or corrupted"
  else:  # a whole ArrayRecord file, but not this split's
    shard.unlink()
    sources.write_token_records(shard, [[1, 2, 3]] * 3)
    said = f"holds 3 records; its dataset's metadata says {len(intact)}"
  with pytest.raises(shards.ShardError) as err:
    corpus.open_split(builder, "train")  # before any record is read
  remedy = f"Delete {builder.data_dir} and run again"
  assert str(err.value).startswith(f"{shard} {said}") and remedy in str(
      err.value), err.value
  # The remedy works: prepared afresh, the same records.
  shutil.rmtree(builder.data_dir)
  again, _ = _prepared(tmp_path / "docs", tmp_path / "tfds")
  assert _records(corpus.open_split(again, "train")) == intact


def test_corrupted_chunk_is_named_when_read(tmp_path):
  """Damage inside a shard (its footer intact) shows only when read: the
  record's read error names the file, also through a Grain pipeline."""
  builder, shard = _prepared(tmp_path / "docs", tmp_path / "tfds")
  data = bytearray(shard.read_bytes())
  data[100:164] = bytes(b ^ 0xFF for b in data[100:164])  # the first chunk
  shard.write_bytes(bytes(data))
  source = corpus.open_split(builder, "train")
  docs = grain.MapDataset.source(source).to_iter_dataset()
  with pytest.raises(shards.ShardError, match=(
      f"^{re.escape(str(shard))} cannot be read at record 0 of its split "
      r"\(Corrupted .*\)\. Delete ")):
    next(iter(docs))


def _truncated_token_records(data: Path):
  cfg = run_config(data, "transformer")
  train = Path(cfg.data.paths[0])
  train.write_bytes(train.read_bytes()[:1000])
  return cfg, train


def test_truncated_token_records_are_named_at_open(tmp_path):
  cfg, train = _truncated_token_records(tmp_path / "data")
  with pytest.raises(shards.ShardError, match=(
      f"^{re.escape(str(train))} is truncated or corrupted .*Write it again")):
    sources.open_inputs(cfg.data, cfg.model.vocab_size)


@pytest.mark.slow
def test_a_damaged_corpus_fails_the_command_cleanly(tmp_path):
  _, train = _truncated_token_records(tmp_path / "data")
  out = subprocess.run(_worker("none", 0, tmp_path / "data", tmp_path / "run"),
                       cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 2   # errors.Exit.BAD_INPUT
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith(f"Data error: {train} is truncated or corrupted"), (
      out.stderr[-3000:])
  assert "Traceback" not in out.stderr
