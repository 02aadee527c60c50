"""A fake `gcloud` for launch/tpu_pod.sh supervise: one TPU slice as a
queued resource, whose one worker is this machine.

State lives in $FAKE_CLOUD (a folder): qr.json holds the queued resource
(state, describe count, the worker's home, the process groups it started).
  queued-resources create   WAITING_FOR_RESOURCES, ACTIVE from the second
                            describe; a new, empty worker home (a new VM)
                            with a ready venv (.venv/bin/python is this
                            Python, pip a no-op: nothing is downloaded)
  queued-resources describe its state; an ACTIVE slice is preempted when
                            the run's goodput.json ($FAKE_WORKDIR) reaches
                            the next step of $FAKE_PREEMPT_AT ("8,18"): its
                            processes are killed and it turns SUSPENDED
  queued-resources delete   kills its processes, removes it
  tpu-vm scp / ssh          copy into / run `bash -c COMMAND` in the worker
                            home, as the real ssh would (HOME set, and
                            IIET_COORDINATOR etc. as a one-process pod)
Every call is appended to $FAKE_CLOUD/calls.jsonl.
"""

import json
import os
import signal
import subprocess
import sys
import time

CLOUD = os.environ["FAKE_CLOUD"]
STATE = os.path.join(CLOUD, "qr.json")


def load():
  if not os.path.exists(STATE):
    return None
  with open(STATE) as f:
    return json.load(f)


def save(qr):
  with open(STATE + ".tmp", "w") as f:
    json.dump(qr, f)
  os.replace(STATE + ".tmp", STATE)


def kill(qr):
  for pgid in qr.get("pgids", []):
    try:
      os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
      pass
  qr["pgids"] = []


def new_home(n):
  home = os.path.join(CLOUD, f"vm{n}")
  venv = os.path.join(home, "iiet_jax", ".venv", "bin")
  os.makedirs(venv)
  with open(os.path.join(venv, "python"), "w") as f:
    f.write(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
  os.chmod(os.path.join(venv, "python"), 0o755)
  with open(os.path.join(venv, "pip"), "w") as f:
    f.write("#!/bin/sh\nexit 0\n")
  os.chmod(os.path.join(venv, "pip"), 0o755)
  with open(os.path.join(venv, "activate"), "w") as f:
    f.write(f'PATH="{venv}:$PATH"\n')
  return home


def reached(step):
  path = os.path.join(os.environ["FAKE_WORKDIR"], "goodput.json")
  try:
    with open(path) as f:
      return json.load(f)["last_step"] >= step
  except (OSError, ValueError, KeyError):
    return False


def flag(args, name):
  for a in args:
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
  return None


def main(args):
  with open(os.path.join(CLOUD, "calls.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\n")
  qr = load()
  kind = args[2:4]
  if kind == ["queued-resources", "create"]:
    if qr is not None:
      print("ERROR: already exists", file=sys.stderr)
      return 1
    count = len([n for n in os.listdir(CLOUD) if n.startswith("vm")])
    save({"state": "WAITING_FOR_RESOURCES", "describes": 0,
          "home": new_home(count), "pgids": [], "preempted": 0})
    return 0
  if kind == ["queued-resources", "describe"]:
    if qr is None:
      print("ERROR: NOT_FOUND", file=sys.stderr)
      return 1
    qr["describes"] += 1
    if qr["state"] == "WAITING_FOR_RESOURCES" and qr["describes"] >= 2:
      qr["state"] = "ACTIVE"
    plan = [int(s) for s in os.environ.get("FAKE_PREEMPT_AT", "").split(",")
            if s]
    done = int(open(os.path.join(CLOUD, "preemptions")).read()) \
        if os.path.exists(os.path.join(CLOUD, "preemptions")) else 0
    if (qr["state"] == "ACTIVE" and done < len(plan)
        and reached(plan[done])):
      kill(qr)
      qr["state"] = "SUSPENDED"
      with open(os.path.join(CLOUD, "preemptions"), "w") as f:
        f.write(str(done + 1))
    save(qr)
    print(qr["state"])
    return 0
  if kind == ["queued-resources", "delete"]:
    if qr is None:
      return 1
    kill(qr)
    os.remove(STATE)
    return 0
  if args[2:4] == ["tpu-vm", "scp"]:
    if qr is None or qr["state"] != "ACTIVE":
      return 255
    source, target = args[4], args[5]
    dest = os.path.join(qr["home"], target.split(":", 1)[1])
    subprocess.run(["cp", source, dest], check=True)
    return 0
  if args[2:4] == ["tpu-vm", "ssh"]:
    if qr is None or qr["state"] != "ACTIVE":
      print("ssh: connect to host: Connection refused", file=sys.stderr)
      return 255
    env = dict(os.environ, HOME=qr["home"], IIET_COORDINATOR=
               f"127.0.0.1:{os.environ['FAKE_PORT']}", IIET_NUM_PROCESSES="1",
               IIET_PROCESS_ID="0", JAX_PLATFORMS="cpu")
    process = subprocess.Popen(["bash", "-c", flag(args, "command")],
                               env=env, cwd=qr["home"],
                               start_new_session=True)
    qr["pgids"].append(process.pid)
    save(qr)
    return process.wait()
  print(f"fake gcloud: unknown call {args}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
