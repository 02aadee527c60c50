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
  """What a command's exit code says, and what a supervisor should do
  (`MEANING`; docs/errors.md shows both)."""

  FINISHED = 0
  INTERNAL = 1      # Python's own code for an uncaught exception
  BAD_INPUT = 2
  DIVERGED = 3
  PREEMPTED = 75    # EX_TEMPFAIL of sysexits.h: try again
  INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


MEANING = {
    Exit.FINISHED: ("finished: the run reached total_steps, or the command "
                    "did its work", "nothing"),
    Exit.INTERNAL: ("internal error: a bug, printed with its traceback",
                    "stop; report it with the traceback and iiet.log"),
    Exit.BAD_INPUT: ("bad input: a config value, flag, data or tokenizer "
                     "file, path or workdir (one `<Kind> error:` line)",
                     "stop; fix what the line names"),
    Exit.DIVERGED: ("diverged: a non-finite loss, gradient or weight; "
                    "nothing after it was saved", "stop; change the "
                    "recipe (the line says what to try), then rerun"),
    Exit.PREEMPTED: ("stopped by SIGTERM after saving a checkpoint",
                     "rerun the same command: it resumes exactly"),
    Exit.INTERRUPTED: ("stopped by Ctrl-C: the first saves a checkpoint, a "
                       "second stops at once without saving",
                       "stop (a person asked); rerunning resumes"),
}


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
