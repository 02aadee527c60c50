"""The one path layer for a run's files (local or gs://), and which storage
failure an exception is.

Every file a run writes goes through etils epath (gcsfs for gs://), Orbax /
TensorStore (checkpoints), JAX (the compile cache), tensorboardX (event
files), or the two helpers here:

`write_whole(path, data)` writes a temporary file beside `path` and renames
it over `path`, so a reader, or a run after a kill, sees the old file or the
new one, never half of one. The temporary name, `.NAME.partial-PID`, tells a
leftover apart from a finished file.

`Appended(path)` is a text file that grows (metrics.jsonl, iiet.log). A
local file is opened for appending and flushed at every write. An object
store has no append: the object is rewritten whole (`write_whole`) with
everything so far, every `REMOTE_EVERY` seconds when lines were added, and
at `flush()` and `close()`, so a killed process loses at most that many
seconds of lines (the steps after its last checkpoint are trained again
anyway). For a 100k-step
run's metrics (10k lines, about 4 MB) that is 0.4 MB/s at the end, small
beside its checkpoints; appending by GCS compose would upload less but
leaves a chain of components per object.

Which storage failure an exception is, from any library that writes files:

Orbax reports a failed write from its background thread as whatever the
writer raised: an `OSError`, or TensorStore's `ValueError` whose text holds
the C library's code (`[os_error_code='28']`). `write_failure` finds the
failure in either form, anywhere in the exception's chain, so the caller can
say in plain words what happened and how to fix it.

When one write of a save fails, Orbax closes that save's event loop while
TensorStore still finishes the others; their completion callbacks then hit
the closed loop, and Python prints each as an "unraisable" traceback on the
screen, before and after the clear error. `log_closed_loop_callbacks` sends
those to the library log instead.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import re
import sys
import threading

REMOTE_EVERY = 10.0   # seconds between rewrites of a growing remote file


def is_remote(path) -> bool:
  """Whether `path` is in an object store (gs://, s3://, ...)."""
  return "://" in os.fspath(path)


def write_whole(path, data: str | bytes) -> None:
  """`data` into `path`, whole or not at all (module doc)."""
  from etils import epath
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.parent / f".{path.name}.partial-{os.getpid()}"
  if isinstance(data, str):
    partial.write_text(data)
  else:
    partial.write_bytes(data)
  partial.replace(path)


class Appended:
  """A growing text file, local or remote (module doc). `write` appends;
  what was there before (a resumed run's lines) is kept. A remote file is
  uploaded by a daemon thread, so `write` never waits for the network and a
  client that logs while it uploads (into iiet.log, another `Appended`) never
  waits for a lock the writer holds."""

  def __init__(self, path, every: float = REMOTE_EVERY):
    from etils import epath
    self.path = epath.Path(path)
    self.remote = is_remote(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if not self.remote:
      self._file = open(self.path, "a", encoding="utf-8")
      return
    self._text = self.path.read_text() if self.path.exists() else ""
    self._new: list[str] = []
    self._lock = threading.Lock()        # guards _text and _new
    self._upload_lock = threading.Lock()  # one upload at a time
    self._stop = threading.Event()
    self._uploader = threading.Thread(
        target=self._upload_every, args=(every,), daemon=True,
        name=f"upload {self.path.name}")
    self._uploader.start()

  def write(self, text: str) -> None:
    if not self.remote:
      self._file.write(text)
      self._file.flush()
      return
    with self._lock:
      self._new.append(text)

  def _upload_every(self, every: float) -> None:
    while not self._stop.wait(every):
      try:
        self._upload()
      except Exception:  # pylint: disable=broad-except
        pass   # tried again at the next tick; flush() and close() raise it

  def _upload(self) -> None:
    with self._upload_lock:
      with self._lock:
        if not self._new:
          return
        text = self._text + "".join(self._new)
        count = len(self._new)
      write_whole(self.path, text)
      with self._lock:
        self._text, self._new = text, self._new[count:]

  def flush(self) -> None:
    """Local: to the OS. Remote: uploaded now, if anything was added."""
    if self.remote:
      self._upload()
    else:
      self._file.flush()

  def close(self) -> None:
    if self.remote:
      self._stop.set()
      self._uploader.join()
      self._upload()
    else:
      self._file.close()


_SPACE = "Free space on that disk (or point --workdir at a larger one)"

# errno -> (what happened, how to fix it)
_FAILURES = {
    errno.ENOSPC: ("the disk is full", _SPACE),
    errno.EDQUOT: ("the disk quota is used up", _SPACE),
    errno.EFBIG: ("a file grew past this process's file size limit "
                  "(ulimit -f)", "Raise the limit (ulimit -f unlimited)"),
    errno.EROFS: ("the file system is read-only",
                  "Point --workdir at a writable disk"),
    errno.EACCES: ("permission was denied",
                   "Make the directory writable for this user"),
}
# TensorStore's status text names the code; the C library's text as well.
_CODE = re.compile(r"os_error_code='?(\d+)")
_TEXT = {"No space left on device": errno.ENOSPC,
         "Disk quota exceeded": errno.EDQUOT,
         "File too large": errno.EFBIG,
         "Read-only file system": errno.EROFS}


@dataclasses.dataclass(frozen=True)
class WriteFailure:
  code: int          # the errno
  reason: str        # "the disk is full"
  fix: str           # "Free space on that disk ..."
  detail: str        # the C library's text, e.g. "No space left on device"


def _chain(err: BaseException):
  seen = set()
  while err is not None and id(err) not in seen:
    seen.add(id(err))
    yield err
    err = err.__cause__ or err.__context__


def write_failure(err: BaseException) -> WriteFailure | None:
  """The storage failure behind `err`, or None if it is something else."""
  for link in _chain(err):
    code = getattr(link, "errno", None) if isinstance(link, OSError) else None
    if code not in _FAILURES:
      text = str(link)
      found = _CODE.search(text)
      code = int(found.group(1)) if found else next(
          (c for t, c in _TEXT.items() if t in text), None)
    if code in _FAILURES:
      reason, fix = _FAILURES[code]
      return WriteFailure(code, reason, fix, os.strerror(code))
  return None


def _closed_loop_callback(unraisable) -> bool:
  return (unraisable.exc_type is RuntimeError
          and str(unraisable.exc_value) == "Event loop is closed")


def log_closed_loop_callbacks() -> None:
  """Logs (not prints) callbacks that land on a closed event loop; every
  other unraisable exception goes to the hook that was there. Idempotent."""
  previous = sys.unraisablehook
  if getattr(previous, "_iiet_closed_loop", False):
    return

  def hook(unraisable):
    if _closed_loop_callback(unraisable):
      logging.getLogger(__name__).info(
          "a write's completion callback found its event loop closed (the "
          "save had already failed): %s", unraisable.exc_value)
    else:
      previous(unraisable)

  hook._iiet_closed_loop = True
  sys.unraisablehook = hook
