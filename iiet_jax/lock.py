"""One writer per run: `WORKDIR/run.lock`.

  with lock.held(workdir, "train"):
    ...   # train, distill or import into workdir

The file is JSON: host, pid, the process's start time, command and a
heartbeat (unix seconds) that a daemon thread renews every `HEARTBEAT`
seconds. Only process 0 of a multi-process run takes it; the others share it
(the caller tells them the outcome, parallel/multihost.py).

A second writer reads the file and
- takes it over when the owner ran on this host and its process is gone
  (no such pid, or a pid reused by a process that started later), or when
  the owner ran elsewhere and its heartbeat is older than `STALE`;
- waits up to `STALE` seconds when the owner ran on another host and its
  heartbeat is fresh (a restart on new machines right after the old ones
  died), then takes it over or refuses;
- else refuses with a `LockError` naming the owner's pid, host and command.
A refusal costs nothing: it comes before any file of the run is written.

Local folders: a lock is written whole to a temporary file and hard-linked
to its name, which fails when the name exists (so nobody reads a half-written
lock); a takeover renames a new file over the stale one and reads it back
after a moment (the last rename wins, the loser refuses). An owner that
finds its lock taken over (it stalled past `STALE`) sees `lost` and stops
before its next save. Remote folders (`gs://`,
through etils epath) have no atomic create: two writers that start within
the same second can both proceed; one started later is refused as above.
No maintained library does this: filelock's locks are held by the open
file, so they neither work across hosts nor survive the owner's process for
the heartbeat check above.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid

from etils import epath

from iiet_jax.errors import UserError

NAME = "run.lock"
HEARTBEAT = 20.0   # seconds between renewals
STALE = 90.0       # a heartbeat older than this: the owner's host is gone


class LockError(UserError):
  """Another live process writes this workdir."""

  kind = "Workdir"


def _start_time(pid: int) -> str | None:
  """The process's start time since boot (clock ticks), or None."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def pid_alive(pid: int) -> bool:
  """Whether process `pid` of this host exists (another user's counts)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  return True


def _alive(owner: dict) -> bool:
  """Whether a same-host owner's process still runs."""
  pid = int(owner.get("pid", -1))
  if pid == os.getpid():
    return False   # an earlier call in this very process that did not finish
  if not pid_alive(pid):
    return False
  started = owner.get("start_time")
  return started is None or _start_time(pid) in (None, started)


class _Lock:
  def __init__(self, workdir: epath.Path, command: str):
    self.path = workdir / NAME
    self.local = "://" not in str(self.path)
    self.mine = dict(host=socket.gethostname(), pid=os.getpid(),
                     start_time=_start_time(os.getpid()), command=command,
                     token=uuid.uuid4().hex)
    self._stop = threading.Event()
    self._thread = None
    self._lost = False

  def _text(self) -> str:
    return json.dumps({**self.mine, "heartbeat": time.time()})

  def _read(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (ValueError, OSError):
      # Unreadable: written by hand, or cut short by a remote writer that
      # died. Live until its file is as old as a stale heartbeat.
      try:
        mtime = (os.stat(self.path).st_mtime if self.local
                 else self.path.stat().mtime)   # etils': whole seconds
        age = time.time() - mtime
      except OSError:
        return None
      return {} if age > STALE else {"host": "?", "pid": "?",
                                     "heartbeat": time.time() - age}

  def _write(self, exclusive: bool) -> bool:
    if not self.local:
      if exclusive and self.path.exists():
        return False
      self.path.write_text(self._text())
      return True
    tmp = self.path.with_name(f".{NAME}.{self.mine['token']}")
    tmp.write_text(self._text())
    try:
      if not exclusive:
        os.replace(tmp, self.path)
        return True
      try:
        os.link(tmp, self.path)   # atomic, and the content is already there
      except FileExistsError:
        return False
      return True
    finally:
      with contextlib.suppress(FileNotFoundError):
        tmp.unlink()

  def _owner_gone(self, owner: dict) -> bool:
    if not owner or "host" not in owner:
      return True
    if owner["host"] == self.mine["host"]:
      return not _alive(owner)
    return time.time() - float(owner.get("heartbeat", 0)) > STALE

  def acquire(self) -> None:
    deadline = time.time() + STALE + HEARTBEAT
    while not self._write(exclusive=True):
      owner = self._read()
      if owner is None:
        continue   # released meanwhile: try the atomic create again
      if self._owner_gone(owner):
        self._write(exclusive=False)
        time.sleep(0.2)   # a rival's takeover renames after ours, or not
        if (self._read() or {}).get("token") == self.mine["token"]:
          break
        continue   # another writer took it over first
      if owner["host"] != self.mine["host"] and time.time() < deadline:
        time.sleep(min(HEARTBEAT / 4, max(deadline - time.time(), 0.1)))
        continue
      raise LockError(
          f"{self.path.parent} is in use by `iiet {owner.get('command')}` "
          f"(pid {owner.get('pid')} on host {owner.get('host')}, heartbeat "
          f"{time.time() - float(owner.get('heartbeat', 0)):.0f} s ago): one "
          f"run writes a workdir at a time. Wait for it or stop it, or give "
          f"this run another --workdir. (If that process is gone, delete "
          f"{self.path}.)")
    self._thread = threading.Thread(target=self._beat, daemon=True,
                                    name="iiet-lock-heartbeat")
    self._thread.start()

  @property
  def lost(self) -> bool:
    """Whether another writer has taken the lock over."""
    return self._lost

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT):
      with contextlib.suppress(OSError):
        if (self._read() or {}).get("token") == self.mine["token"]:
          self._write(exclusive=False)
        else:
          self._lost = True
          return

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    with contextlib.suppress(OSError):
      if (self._read() or {}).get("token") == self.mine["token"]:
        self.path.unlink()


class _Shared:
  """What processes other than 0 hold: nothing that can be lost."""

  lost = False


@contextlib.contextmanager
def held(workdir: epath.PathLike, command: str, primary: bool = True,
         primary_says=lambda ok: ok):
  """Holds the workdir's lock (an existing folder) for the block and yields
  it (`.lost`: taken over since). In a multi-process run only the `primary`
  process takes it, and `primary_says(ok)` (parallel/multihost.py) tells
  the others whether it did, so all of them stop together when it did
  not, whatever the reason."""
  lock, error = None, None
  if primary:
    lock = _Lock(epath.Path(workdir), command)
    try:
      lock.acquire()
    except Exception as err:   # LockError, or the disk refusing the file
      lock, error = None, err
  if not primary_says(error is None):
    raise error or LockError(f"{workdir}: process 0 of this run could not "
                             f"take {NAME}; its output says why.")
  try:
    yield lock if lock is not None else _Shared()
  finally:
    if lock is not None:
      lock.release()
