"""The console: our lines on the screen, library logs in the run's log file.

Orbax, TFDS, Grain and JAX log through absl or Python logging; a tiny run
prints hundreds of INFO lines. Here every record goes to `<workdir>/iiet.log`
(local or gs://, `storage.Appended`; other hosts of a gs:// run write
`iiet.process_N.log`)
(held in memory until the command knows it may write there, and until the
run has created its workdir); the screen shows the project's own logger
(`iiet_jax.errors.LOGGER`) only. A library's error that matters reaches the
user as our own error line or a traceback; its log lines (Orbax's on a full
disk, say) stay in the file. A folder this user cannot write (a read-only
run that `export` or `score` reads) gets no log file: reading a run never
needs to write into it.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import time

from iiet_jax import storage
from iiet_jax.errors import LOGGER

LOG_FILE = "iiet.log"
_BUFFERED = 20000   # records held before the file opens; older ones dropped


def accelerator_attached() -> bool:
  """A TPU (Google PCI device, /dev/accel*, /dev/vfio) or GPU node exists."""
  for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      if open(vendor).read().strip() == "0x1ae0":  # Google: TPU chips
        return True
    except OSError:
      continue
  nodes = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*",
           "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")
  return any(glob.glob(pattern) for pattern in nodes)


def quiet_cpu_host(environ=os.environ) -> None:
  """With libtpu installed (the tpu extra) JAX probes for a TPU on every
  start, and libtpu prints errors about TPU worker hostnames where there is
  none. On a host with no accelerator the CPU is the only platform anyway,
  so naming it skips the probe. Call before jax is imported; an explicit
  JAX_PLATFORMS is left alone."""
  if "JAX_PLATFORMS" not in environ and not accelerator_attached():
    environ["JAX_PLATFORMS"] = "cpu"


class _RunLog(logging.Handler):
  """Every record into the log file, buffered until `attach`."""

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname).1s %(name)s: %(message)s"))
    self.buffer: list[logging.LogRecord] = []
    self.stream = None
    self.path = None
    self.pending = None   # the log file, once its folder exists
    self.dead = False     # a write failed: no log file any more
    self._next_check = 0.0  # when a pending remote folder is asked again

  def emit(self, record):
    if self.dead:
      return
    if self.stream is None and self.pending is not None:
      # A bucket is asked at most once a second, not once per record.
      if not storage.is_remote(self.pending) or (
          time.monotonic() >= self._next_check):
        self._next_check = time.monotonic() + 1.0
        if _folder_exists(self.pending):
          self.attach(self.pending)
    if self.stream is None:
      if len(self.buffer) < _BUFFERED:
        self.buffer.append(record)
      return
    try:
      self.stream.write(self.format(record) + "\n")
    except Exception:  # pylint: disable=broad-except
      # The disk is full, the file at its size limit, the bucket gone: the
      # command's own error says so; the log file stops here, not raising.
      self._drop()

  def _drop(self) -> None:
    self.dead, self.buffer = True, []
    stream, self.stream = self.stream, None
    if stream is not None:
      try:
        stream.close()
      except Exception:  # pylint: disable=broad-except
        pass

  def attach(self, path: str) -> None:
    if self.stream is not None:
      return
    if not _folder_exists(path):
      self.pending = path   # the run creates it after its data checks
      return
    try:
      self.stream = storage.Appended(path)
    except Exception:  # pylint: disable=broad-except
      # A read-only run (or bucket): no log file, nothing else changes.
      self._drop()
      self.pending = None
      return
    self.pending = None
    self.path = path
    buffered, self.buffer = self.buffer, []
    for record in buffered:
      self.emit(record)

  def close(self):
    self._drop()
    super().close()


class _Screen(logging.Handler):
  """Our own lines as they are, while the command runs. After it has
  returned, nothing: a late line (the preemption service's, say) would bury
  the command's own last line."""

  returned = False

  def emit(self, record):
    ours = record.name == LOGGER or record.name.startswith(LOGGER + ".")
    if ours and not self.returned:
      print(record.getMessage(), file=sys.stderr, flush=True)


_run_log = _RunLog()
_screen = _Screen()


def setup() -> None:
  """Routes absl / Python logging (and Python warnings) as described above."""
  root = logging.getLogger()
  for handler in list(root.handlers):
    root.removeHandler(handler)
  root.addHandler(_run_log)
  _run_log.dead, _run_log.pending = False, None   # a new command
  _screen.returned = False
  root.addHandler(_screen)
  root.setLevel(logging.INFO)
  logging.captureWarnings(True)
  try:
    from absl import logging as absl_logging
    # absl's own handler would print to stderr; the root's handlers decide.
    absl_logging.get_absl_logger().propagate = True
    absl_logging.get_absl_handler().setLevel(logging.CRITICAL + 1)
  except ImportError:
    pass


def _folder_exists(path: str) -> bool:
  if not storage.is_remote(path):
    return os.path.isdir(os.path.dirname(path))
  from etils import epath
  return epath.Path(path).parent.is_dir()


def log_name(process: int) -> str:
  """iiet.log for process 0; on other hosts iiet.process_N.log, since an
  object (gs://) has one writer."""
  return LOG_FILE if process == 0 else f"iiet.process_{process}.log"


def attach(workdir: str) -> str | None:
  """Writes the log file in `workdir` (local or gs://): from now on if the
  folder exists and is writable, from when it is created if not yet."""
  workdir = os.fspath(workdir)
  if storage.is_remote(workdir):
    import jax   # the run has started JAX (and jax.distributed) by now
    process = jax.process_index() if jax.distributed.is_initialized() else 0
    path = f"{workdir.rstrip('/')}/{log_name(process)}"
  elif os.path.isfile(workdir):
    return None
  else:
    path = os.path.join(os.path.abspath(workdir), LOG_FILE)
  _run_log.attach(path)
  return path


def close() -> None:
  """The command has returned: its last line stays the last on the screen."""
  _screen.returned = True
  _run_log.close()
