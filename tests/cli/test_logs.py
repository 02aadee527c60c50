"""The screen: our lines and library errors, and our line stays the last."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import logging, sys
from iiet_jax.cli import logs
logs.setup()
logging.getLogger("asyncio").error("library error while running")
print("Checkpoint error: the command's own last line", file=sys.stderr)
logs.close()
logging.getLogger("asyncio").error("future: collected after the command")
"""


def test_library_errors_after_the_command_returns_stay_off_the_screen():
  done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True,
                        text=True, timeout=120, check=True)
  lines = done.stderr.strip().splitlines()
  assert lines == ["error  asyncio: library error while running",
                   "Checkpoint error: the command's own last line"], lines
