"""Cluster launchers: what --dry-run prints is what runs, and bad input stops.

launch/tpu_pod.sh and launch/gpu_cluster.sh are run through bash with fake
`gcloud`, `sbatch` and `python` programs that record their arguments; the
remote commands of a TPU start and stop are run here, in a fake worker home.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash")
TPU_POD = ROOT / "launch" / "tpu_pod.sh"
GPU_CLUSTER = ROOT / "launch" / "gpu_cluster.sh"
POD = ["--tpu=pod-1", "--zone=us-west4-a", "--project=proj-7"]
# Train args must reach python unchanged: a comma, spaces, quotes, a glob and
# a dollar sign that no shell on the way may touch.
TRAIN = ["--config=configs/lm.py:model=iiet,size=340m",
         "--workdir=gs://bucket/iiet 340m",
         "--config.data.paths=/data/my corpus/*.txt",
         """--config.name=it's a "quoted" $HOME name"""]

# Records each call as a JSON line in $FAKE_LOG, and keeps a copy of any
# tarball it is handed (the one gcloud scp would send).
FAKE = f"""#!{sys.executable}
import json, os, shutil, sys
for a in sys.argv[1:]:
  if a.endswith(".tar.gz") and os.path.isfile(a):
    shutil.copy(a, os.environ["FAKE_LOG"] + ".tar.gz")
with open(os.environ["FAKE_LOG"], "a") as f:
  f.write(json.dumps(dict(
      tool=os.path.basename(sys.argv[0]), argv=sys.argv[1:], cwd=os.getcwd(),
      env={{k: v for k, v in os.environ.items() if k.startswith("IIET_")}}))
      + "\\n")
"""


def launch(script, *args, env=None):
  return subprocess.run([BASH, str(script), *args], capture_output=True,
                        text=True, timeout=60, env=env)


def commands(stdout: str) -> list[list[str]]:
  return [shlex.split(line[2:]) for line in stdout.splitlines()
          if line.startswith("+ ")]


def remote(ssh: list[str]) -> str:
  (command,) = [a[len("--command="):] for a in ssh
                if a.startswith("--command=")]
  return command


def fake_tools(tmp_path: Path, *names: str) -> tuple[dict, Path]:
  """An environment whose PATH finds recording fakes of `names` first."""
  bin_dir, log = tmp_path / "fakebin", tmp_path / "calls.jsonl"
  bin_dir.mkdir(exist_ok=True)
  for name in names:
    (bin_dir / name).write_text(FAKE)
    (bin_dir / name).chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
             FAKE_LOG=str(log), TMPDIR=str(tmp_path))
  return env, log


def calls(log: Path) -> list[dict]:
  if not log.exists():
    return []
  return [json.loads(line) for line in log.read_text().splitlines()]


def repo_copy(tmp_path: Path) -> Path:
  """The launch scripts in a scratch repo root, so what they write is seen."""
  root = tmp_path / "repo"
  (root / "launch").mkdir(parents=True)
  shutil.copy(GPU_CLUSTER, root / "launch")
  shutil.copy(GPU_CLUSTER.parent / "shell.sh", root / "launch")
  return root


# TPU pods.


def test_tpu_start_dry_run():
  out = launch(TPU_POD, "--dry-run", *POD, "--run=exp1", "start", "--",
               *TRAIN)
  assert out.returncode == 0, out.stderr
  git, scp, setup, start = commands(out.stdout)
  assert git[:2] == ["git", "-C"] and "archive" in git
  assert "--format=tar.gz" in git and git[-1] == "HEAD"
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert scp[6] == "pod-1:iiet_jax-exp1.tar.gz"
  for cmd in (scp, setup, start):
    assert {"--worker=all", "--zone=us-west4-a", "--project=proj-7"} <= set(cmd)
  for cmd in (setup, start):
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod-1"]
  assert "tar -xzf ~/iiet_jax-exp1.tar.gz -C ~/iiet_jax" in remote(setup)
  assert "pip install --quiet -e '.[tpu]'" in remote(setup)
  command = remote(start)
  assert "IIET_DISTRIBUTED=auto python -m iiet_jax.main " in command
  assert "trap '' HUP" in command   # as nohup
  assert ">> ~/iiet_runs/exp1.log" in command
  assert "echo $! > ~/iiet_runs/exp1.pid" in command
  assert "echo $code > ~/iiet_runs/exp1.exit" in command
  args = command.split("python -m iiet_jax.main ", 1)[1].split(" & child", 1)[0]
  assert shlex.split(args) == TRAIN
  assert out.stderr == ""
  # Not gs://: a warning that the workers must share it, but no error.
  out = launch(TPU_POD, "--dry-run", *POD, "start", "--", TRAIN[0],
               "--workdir=/tmp/run")
  assert out.returncode == 0 and "is not gs://" in out.stderr


def test_tpu_start_stop_status_on_a_fake_worker(tmp_path):
  """The remote commands, run by bash in a fake worker's home directory."""
  home = tmp_path / "home"
  venv_bin = home / "iiet_jax" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  (home / "iiet_runs").mkdir()  # made by start's install step
  (venv_bin / "activate").write_text(f'PATH="{venv_bin}:$PATH"\n')
  (venv_bin / "python").write_text(f"""#!{sys.executable}
import json, os, signal, sys, time
out = os.path.join(os.environ["HOME"], "trainer")
def stop(*_):
  open(out + ".term", "w").write("SIGTERM")
  sys.exit(0)
signal.signal(signal.SIGTERM, stop)
with open(out + ".tmp", "w") as f:
  json.dump(dict(argv=sys.argv[1:], pid=os.getpid(),
                 distributed=os.environ.get("IIET_DISTRIBUTED")), f)
os.rename(out + ".tmp", out + ".json")
time.sleep(30)
""")
  (venv_bin / "python").chmod(0o755)
  env = dict(os.environ, HOME=str(home))

  def on_worker(action, *extra):
    out = launch(TPU_POD, "--dry-run", *POD, action, *extra)
    assert out.returncode == 0, out.stderr
    return subprocess.run([BASH, "-c", remote(commands(out.stdout)[-1])],
                          capture_output=True, text=True, env=env, timeout=30)

  assert "iiet not running" in on_worker("status").stdout
  started = on_worker("start", "--", *TRAIN)
  assert started.returncode == 0, started.stderr
  record = home / "trainer.json"
  for _ in range(200):
    if record.exists():
      break
    time.sleep(0.05)
  trainer = json.loads(record.read_text())
  try:
    assert trainer["argv"] == ["-m", "iiet_jax.main", *TRAIN]
    assert trainer["distributed"] == "auto"
    # The pid file names the subshell that runs the trainer, passes SIGTERM
    # on and keeps its exit code.
    pid = int((home / "iiet_runs" / "iiet.pid").read_text())
    parent = int(Path(f"/proc/{trainer['pid']}/stat").read_text().split(
        ")")[1].split()[1])
    assert parent == pid
    assert f"running, pid {pid}" in on_worker("status").stdout
    stopped = on_worker("stop")
    assert "sent SIGTERM" in stopped.stdout
    for _ in range(200):
      if (home / "trainer.term").exists():
        break
      time.sleep(0.05)
    assert (home / "trainer.term").read_text() == "SIGTERM"
    exit_file = home / "iiet_runs" / "iiet.exit"
    for _ in range(200):
      if exit_file.exists() and exit_file.read_text().strip():
        break
      time.sleep(0.05)
    assert exit_file.read_text().strip() == "0"   # the fake trainer's code
  finally:
    try:
      os.kill(trainer["pid"], signal.SIGKILL)
    except ProcessLookupError:
      pass
  assert "=== start" in (home / "iiet_runs" / "iiet.log").read_text()


def test_tpu_stop_and_status_reach_all_workers():
  out = launch(TPU_POD, "--dry-run", *POD, "--run=exp1", "stop")
  (stop,) = commands(out.stdout)
  assert stop[4:6] == ["ssh", "pod-1"] and "--worker=all" in stop
  assert 'kill -TERM "$(cat ~/iiet_runs/exp1.pid)"' in remote(stop)
  out = launch(TPU_POD, "--dry-run", *POD, "status")
  (status,) = commands(out.stdout)
  assert "--worker=all" in status and "kill -0" in remote(status)


@pytest.mark.parametrize("extra,worker", [((), "0"), (("--worker=3",), "3")])
def test_tpu_logs_worker(extra, worker):
  out = launch(TPU_POD, "--dry-run", *POD, "logs", *extra)
  assert out.returncode == 0, out.stderr
  (ssh,) = commands(out.stdout)
  assert f"--worker={worker}" in ssh and "--worker=all" not in ssh
  assert remote(ssh) == "tail -n 100 -f ~/iiet_runs/iiet.log"


@pytest.mark.parametrize("args,message", [
    ((*POD, "start", "--", TRAIN[0]), "start needs --workdir="),
    ((*POD, "start"), "start needs --workdir="),
    ((*POD, "start", "--", TRAIN[1]), "start needs --config="),
    ((*POD, "restart"), "unknown ACTION 'restart'"),
    ((*POD,), "missing ACTION"),
    ((POD[1], "status"), "missing --tpu=NAME"),
    ((POD[0], "status"), "missing --zone=ZONE"),
    ((*POD, "--tpus=x", "status"), "unknown option --tpus=x"),
    ((*POD, "--tpu", "status"), "--tpu needs a value"),
    ((*POD, "stop", "--", *TRAIN), "train args after -- are for start"),
    ((*POD, "--worker=3", "stop"), "--worker=N is for logs and status"),
    ((*POD, "--worker=w1", "logs"), "--worker=w1 is not a worker number"),
    ((*POD, "--run=a b", "logs"), "--run=a b"),
    ((*POD, "logs", "status"), "one ACTION only"),
])
def test_tpu_bad_usage(args, message):
  out = launch(TPU_POD, "--dry-run", *args)
  assert out.returncode == 2
  first, *rest = out.stderr.splitlines()
  assert first.startswith("tpu_pod.sh: ") and message in first
  assert any("launch/tpu_pod.sh [--dry-run] --tpu=NAME" in l for l in rest)
  assert out.stdout == ""


def test_tpu_start_runs_what_dry_run_prints(tmp_path):
  env, log = fake_tools(tmp_path, "gcloud")
  dry = launch(TPU_POD, "--dry-run", *POD, "start", "--", *TRAIN, env=env)
  assert calls(log) == []
  out = launch(TPU_POD, *POD, "start", "--", *TRAIN, env=env)
  assert out.returncode == 0, out.stderr
  gcloud = [c for c in commands(dry.stdout) if c[0] == "gcloud"]
  assert [["gcloud", *c["argv"]] for c in calls(log)] == gcloud
  # The committed tree was sent, and the local tarball is gone afterwards.
  with tarfile.open(str(log) + ".tar.gz") as tar:
    assert {"pyproject.toml", "iiet_jax/main.py"} <= set(tar.getnames())
  assert not (tmp_path / "iiet_jax-iiet.tar.gz").exists()


# GPU clusters.

SLURM = ["slurm", "--nodes=4", "--gpus-per-node=8", "--partition=gpu",
         "--time=12:00:00", "--run=r1"]
ENV = ["env", "--coordinator=10.0.0.1:1234", "--num-processes=4",
       "--process-id=3"]


def test_dry_run_runs_nothing(tmp_path):
  root = repo_copy(tmp_path)
  env, log = fake_tools(tmp_path, "gcloud", "git", "sbatch", "srun", "python",
                        "python3", "mkdir", "tar")
  for args in [(*POD, "start", "--", *TRAIN), (*POD, "stop"), (*POD, "logs"),
               (*POD, "status")]:
    out = launch(TPU_POD, "--dry-run", *args, env=env)
    assert out.returncode == 0, out.stderr
  for args in [(*SLURM, "--", *TRAIN), (*ENV, "--", *TRAIN)]:
    out = launch(root / "launch" / "gpu_cluster.sh", "--dry-run", *args,
                 env=env)
    assert out.returncode == 0, out.stderr
  assert calls(log) == []
  assert sorted(p.name for p in root.iterdir()) == ["launch"]
  assert not (tmp_path / "iiet_jax-iiet.tar.gz").exists()
  # Without --dry-run the same fakes are called, so the check above can fail.
  assert launch(TPU_POD, *POD, "stop", env=env).returncode == 0
  assert [c["tool"] for c in calls(log)] == ["gcloud"]


def test_slurm_dry_run():
  out = launch(GPU_CLUSTER, "--dry-run", *SLURM, "--", *TRAIN)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0] == "+ mkdir -p iiet_runs"
  assert lines[1] == "# iiet_runs/r1.sbatch"
  assert lines[-1] == "+ sbatch iiet_runs/r1.sbatch"
  script = lines[2:-1]
  for line in ["#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1",
               "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu",
               "#SBATCH --time=12:00:00", "#SBATCH --output=iiet_runs/r1-%j.log",
               f"#SBATCH --chdir={ROOT}", "export IIET_DISTRIBUTED=auto"]:
    assert line in script
  (srun,) = [l for l in script if l.startswith("srun ")]
  assert shlex.split(srun) == ["srun", "--kill-on-bad-exit=0", "python", "-m",
                               "iiet_jax.main", *TRAIN]


def test_slurm_writes_and_submits(tmp_path):
  root = repo_copy(tmp_path)
  env, log = fake_tools(tmp_path, "sbatch")
  dry = launch(root / "launch" / "gpu_cluster.sh", "--dry-run", *SLURM, "--",
               *TRAIN, env=env)
  out = launch(root / "launch" / "gpu_cluster.sh", *SLURM, "--", *TRAIN,
               env=env)
  assert out.returncode == 0, out.stderr
  (sbatch,) = calls(log)
  assert sbatch["argv"] == ["iiet_runs/r1.sbatch"] and sbatch["cwd"] == str(root)
  written = (root / "iiet_runs" / "r1.sbatch").read_text()
  assert written.splitlines() == dry.stdout.splitlines()[2:-1]
  assert subprocess.run([BASH, "-n", str(root / "iiet_runs" / "r1.sbatch")]
                        ).returncode == 0


def test_env_form(tmp_path):
  env, log = fake_tools(tmp_path, "python")
  dry = launch(GPU_CLUSTER, "--dry-run", *ENV, "--", *TRAIN, env=env)
  assert dry.returncode == 0, dry.stderr
  assert calls(log) == []
  lines = dry.stdout.splitlines()
  for line in ["+ export IIET_COORDINATOR=10.0.0.1:1234",
               "+ export IIET_NUM_PROCESSES=4", "+ export IIET_PROCESS_ID=3"]:
    assert line in lines
  assert commands(dry.stdout)[-1] == ["python", "-m", "iiet_jax.main", *TRAIN]
  out = launch(GPU_CLUSTER, *ENV, "--", *TRAIN, env=env)
  assert out.returncode == 0, out.stderr
  (python,) = calls(log)
  assert python["argv"] == ["-m", "iiet_jax.main", *TRAIN]
  assert python["env"] == {"IIET_COORDINATOR": "10.0.0.1:1234",
                           "IIET_NUM_PROCESSES": "4", "IIET_PROCESS_ID": "3"}
  assert python["cwd"] == str(ROOT)


@pytest.mark.parametrize("args,message", [
    (("env", "--coordinator=h:1", "--num-processes=4", "--process-id=4"),
     "--process-id=4 is not in 0..3"),
    (("env", "--coordinator=h:1", "--num-processes=4", "--process-id=-1"),
     "--process-id=-1"),
    (("env", "--coordinator=h:1", "--num-processes=0", "--process-id=0"),
     "--num-processes=0"),
    (("env", "--coordinator=host", "--num-processes=2", "--process-id=0"),
     "--coordinator=host needs HOST:PORT"),
    (("env", "--coordinator=h:1", "--num-processes=2"),
     "missing --process-id"),
    (("env", "--coordinator=h:1", "--num-processes=2", "--process-id=0",
      "--nodes=2"), "--nodes is not an option of the env form"),
    (("slurm", "--nodes=0", "--gpus-per-node=8"), "--nodes=0"),
    (("slurm", "--nodes=2"), "missing --gpus-per-node"),
    (("slurm", "--nodes=2", "--gpus-per-node=8", "--time=2h"), "--time=2h"),
    (("mpi", "--nodes=2"), "unknown form 'mpi'"),
    ((), "missing the form"),
])
def test_gpu_bad_usage(args, message):
  out = launch(GPU_CLUSTER, "--dry-run", *args, "--", *TRAIN)
  assert out.returncode == 2
  first, *rest = out.stderr.splitlines()
  assert first.startswith("gpu_cluster.sh: ") and message in first
  assert any("launch/gpu_cluster.sh [--dry-run] slurm" in l for l in rest)
  assert out.stdout == ""


def test_gpu_needs_workdir():
  out = launch(GPU_CLUSTER, "--dry-run", *ENV, "--", TRAIN[0])
  assert out.returncode == 2 and "--workdir=DIR" in out.stderr.splitlines()[0]


@pytest.mark.parametrize("code,requeued", [(75, True), (2, False), (0, False)])
def test_slurm_job_requeues_only_a_preempted_run(tmp_path, code, requeued):
  # The written job script, run with an srun that exits `code`
  # (errors.Exit: 75 preempted after saving, 2 bad input, 0 finished).
  out = launch(GPU_CLUSTER, "--dry-run", *SLURM, "--", *TRAIN)
  job = tmp_path / "job.sh"
  job.write_text("\n".join(out.stdout.splitlines()[2:-1]) + "\n")
  env, log = fake_tools(tmp_path, "scontrol")
  (tmp_path / "fakebin" / "srun").write_text(f"#!/bin/sh\nexit {code}\n")
  (tmp_path / "fakebin" / "srun").chmod(0o755)
  run = subprocess.run(["bash", str(job)], env={**env, "SLURM_JOB_ID": "7"},
                       capture_output=True, text=True, timeout=60)
  assert run.returncode == code, run.stderr
  assert [c["argv"] for c in calls(log)] == (
      [["requeue", "7"]] if requeued else [])


# TPU pods, unattended: launch/tpu_pod.sh supervise against a fake gcloud
# (tests/fake_gcloud.py) whose one worker is this machine, running the real
# remote command lines and a real tiny training run.


def _supervisor(tmp_path: Path, train: list[str], preempt_at: str = "",
                retries: int = 3):
  import socket
  cloud, bin_dir = tmp_path / "cloud", tmp_path / "bin"
  cloud.mkdir(exist_ok=True)
  bin_dir.mkdir(exist_ok=True)
  (bin_dir / "gcloud").write_text(
      f"#!/bin/sh\nexec {sys.executable} {ROOT / 'tests' / 'fake_gcloud.py'}"
      f' "$@"\n')
  (bin_dir / "gcloud").chmod(0o755)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
             FAKE_CLOUD=str(cloud), FAKE_WORKDIR=str(tmp_path / "run"),
             FAKE_PREEMPT_AT=preempt_at, FAKE_PORT=str(port),
             IIET_SUPERVISE_POLL="0.3", IIET_SUPERVISE_BACKOFF="0.1",
             TMPDIR=str(tmp_path))
  run = f"sup{os.getpid()}x{len(str(tmp_path))}"
  argv = [BASH, str(TPU_POD), "--tpu=pod-s", "--zone=us-west4-a",
          "--accelerator-type=v5litepod-16", "--spot", f"--run={run}",
          f"--retries={retries}", "supervise", "--",
          f"--config=tests/run_config.py:{tmp_path / 'data'},transformer",
          f"--workdir={tmp_path / 'run'}",
          f"--config.compile_cache_dir={tmp_path / 'cache'}", *train]
  log = ROOT / "iiet_runs" / f"{run}.supervise.log"
  return argv, env, cloud, log


def _cloud_calls(cloud: Path) -> list[str]:
  """The queued-resource calls, in order: create / delete."""
  return [json.loads(line)[3] for line in
          (cloud / "calls.jsonl").read_text().splitlines()
          if json.loads(line)[2] == "queued-resources"
          and json.loads(line)[3] in ("create", "delete")]


@pytest.mark.slow
def test_supervise_survives_two_preemptions_and_a_restarted_supervisor(
    tmp_path):
  # --retries=1: two preemptions in all, but the run trains on after each,
  # so the count starts again and the supervisor goes on.
  argv, env, cloud, log = _supervisor(
      tmp_path, ["--config.total_steps=30"], preempt_at="10,20", retries=1)
  try:
    # A first supervisor creates the slice and starts the run, and is
    # killed while the run trains; a second one adopts both.
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True,
                             start_new_session=True)
    ledger = tmp_path / "run" / "goodput.json"
    deadline = time.monotonic() + 300
    while not ledger.exists() or json.loads(
        ledger.read_text() or "{}").get("last_step", 0) < 3:
      assert first.poll() is None and time.monotonic() < deadline
      time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    second = subprocess.run(argv, env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    lines = second.stdout.splitlines()
    assert "watching" in lines[1]   # adopted: no second slice at the start
    assert _cloud_calls(cloud) == ["create", "delete", "create", "delete",
                                   "create"]
    said = "\n".join(lines)
    assert said.count("is SUSPENDED (preempted or failed)") == 2
    assert "reached total_steps (summary.json); done" in said
    assert "retry count reset" in said
    assert all(line[:2] == "20" and line[19] == "Z" and " supervise: " in line
               for line in lines), lines
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 30 and not summary["preempted"]
    assert summary["goodput"]["attempts"] == 3
    # Each restart resumed from a checkpoint (every 2 steps) of the run.
    events = [json.loads(line).get("event", "") for line in
              (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    resumed = [e for e in events if e.startswith("resumed from step")]
    assert len(resumed) == 2
    assert log.read_text().splitlines()[-1] == lines[-1]
  finally:
    log.unlink(missing_ok=True)


@pytest.mark.slow
def test_supervise_does_not_retry_bad_input(tmp_path):
  argv, env, cloud, log = _supervisor(tmp_path, ["--config.total_steps=0"])
  try:
    out = subprocess.run(argv, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "exited 2 (bad input): not retried" in out.stdout
    assert _cloud_calls(cloud) == ["create"]
  finally:
    log.unlink(missing_ok=True)
