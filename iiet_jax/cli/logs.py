"""The console: our lines on the screen, library logs in the run's log file.

Orbax, TFDS, Grain and JAX log through absl or Python logging; a tiny run
prints hundreds of INFO lines. Here every record goes to `<workdir>/iiet.log`
(held in memory until the command knows it may write there); the screen
shows the project's own logger (`iiet_jax.errors.LOGGER`) and library errors.
"""

from __future__ import annotations

import glob
import logging
import os
import sys

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

  def emit(self, record):
    if self.stream is None:
      if len(self.buffer) < _BUFFERED:
        self.buffer.append(record)
      return
    self.stream.write(self.format(record) + "\n")
    self.stream.flush()

  def attach(self, path: str) -> None:
    if self.stream is not None:
      return
    self.stream = open(path, "a", encoding="utf-8")
    self.path = path
    for record in self.buffer:
      self.emit(record)
    self.buffer = []

  def close(self):
    if self.stream is not None:
      self.stream.close()
      self.stream = None
    super().close()


class _Screen(logging.Handler):
  """Our own lines as they are; library errors with their logger's name
  until the command has returned. After that, library complaints (asyncio's
  "exception was never retrieved" for a save that already failed, say, which
  arrives when the future is collected) would bury the command's own last
  line, so they are not shown."""

  returned = False

  def emit(self, record):
    if record.name == LOGGER or record.name.startswith(LOGGER + "."):
      text = record.getMessage()
    elif record.levelno >= logging.ERROR and not self.returned:
      text = f"{record.levelname.lower()}  {record.name}: {record.getMessage()}"
    else:
      return
    print(text, file=sys.stderr, flush=True)


_run_log = _RunLog()
_screen = _Screen()


def setup() -> None:
  """Routes absl / Python logging (and Python warnings) as described above."""
  root = logging.getLogger()
  for handler in list(root.handlers):
    root.removeHandler(handler)
  root.addHandler(_run_log)
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


def attach(workdir: str) -> str | None:
  """Starts writing the log file in `workdir` (an existing local folder)."""
  if "://" in str(workdir) or not os.path.isdir(workdir):
    return None
  path = os.path.join(workdir, LOG_FILE)
  _run_log.attach(path)
  return path


def close() -> None:
  """The command has returned: its last line stays the last on the screen."""
  _screen.returned = True
  _run_log.close()
