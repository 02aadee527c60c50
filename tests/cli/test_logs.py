"""The screen shows our lines only; library lines go to the run's log file,
which opens once the run has created its folder, and never into a folder
this user cannot write."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import logging, os, sys
from iiet_jax.cli import logs
logs.setup()
run = sys.argv[1]
logs.attach(run)                       # not created yet: pending
logging.getLogger("absl").error("orbax: a library error")
logging.getLogger("iiet").warning("our own line")
os.makedirs(run)                       # the run creates its workdir
logging.getLogger("asyncio").error("after the folder exists")
print("Checkpoint error: the command's own last line", file=sys.stderr)
logs.close()
logging.getLogger("iiet").warning("late line after the command returned")
"""


def test_library_lines_go_to_the_log_file_once_the_run_exists(tmp_path):
  run = tmp_path / "run"
  done = subprocess.run([sys.executable, "-c", SCRIPT, str(run)],
                        capture_output=True, text=True, timeout=120,
                        check=True)
  lines = done.stderr.strip().splitlines()
  assert lines == ["our own line",
                   "Checkpoint error: the command's own last line"], lines
  log = (run / "iiet.log").read_text()
  assert "orbax: a library error" in log        # buffered, then written
  assert "after the folder exists" in log
  assert "our own line" in log


def test_an_unwritable_log_file_is_skipped_without_an_error(tmp_path):
  # Root ignores permission bits, so the log file is made unopenable the
  # way it also is for root: a folder in its place.
  run = tmp_path / "run"
  (run / "iiet.log").mkdir(parents=True)
  script = ("import logging, sys\nfrom iiet_jax.cli import logs\n"
            "logs.setup()\nlogs.attach(sys.argv[1])\n"
            "logging.getLogger('absl').error('x')\nlogs.close()\n")
  done = subprocess.run([sys.executable, "-c", script, str(run)],
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert done.stderr == ""


def test_a_log_file_that_cannot_grow_stops_quietly():
  # A full disk or a file size limit: the command's own error says so; the
  # log handler must not raise into the code that logged.
  import errno
  import logging
  from iiet_jax.cli import logs

  class Full:
    def write(self, text):
      raise OSError(errno.EFBIG, "File too large")

    def close(self):
      raise OSError(errno.EFBIG, "File too large")

  handler = logs._RunLog()
  handler.stream = Full()
  record = logging.LogRecord("orbax", logging.ERROR, __file__, 1, "x", None,
                             None)
  handler.emit(record)          # no exception
  handler.emit(record)
  assert handler.dead and handler.stream is None and handler.buffer == []
  handler.close()
