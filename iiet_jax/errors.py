"""The one base class of the errors a user can fix, and warning lines.

Every layer raises subclasses of `UserError` for inputs the user controls (a
config value, a path, a checkpoint); the command line catches `UserError`
once and prints `<kind> error: message` with no traceback. Anything else is
a bug and keeps its traceback. This module imports nothing of the project,
so every layer can use it.

`Exit` is the exit-code contract of every command (docs/errors.md), which
supervisors and launch/ rely on: retry a preempted run, stop on the rest.
"""

from __future__ import annotations

import enum
import logging

# The logger of our own lines; the command line shows it on the screen
# (iiet_jax/cli/logs.py) while library loggers go to the run's log file.
LOGGER = "iiet"


class Exit(enum.IntEnum):
  """What a command's exit code says, and what a supervisor should do."""

  FINISHED = 0      # done (a run at total_steps, a command that succeeded)
  INTERNAL = 1      # a bug: Python's own code for an uncaught exception
  BAD_INPUT = 2     # config, data, flags, files: fix the input, do not retry
  DIVERGED = 3      # non-finite loss or weights; newest checkpoint is finite
  PREEMPTED = 75    # stopped by SIGTERM, checkpoint saved: rerun to resume
  INTERRUPTED = 130  # stopped by Ctrl-C (128 + SIGINT), saved unless aborted


class UserError(Exception):
  """An error the user can fix; the message names the value and the fix."""

  kind = "Input"  # the label: "<kind> error: ..."
  exit_code = Exit.BAD_INPUT


def warn(message: str) -> None:
  """A warning the user should see (screen and log file)."""
  logging.getLogger(LOGGER).warning("warning    %s", message)


class MissingInputError(UserError, FileNotFoundError):
  """A corpus, tokenizer or record file the config names does not exist."""

  kind = "Data"


class TokenizerError(UserError, ValueError):
  """A tokenizer that cannot be used as requested."""

  kind = "Data"
