"""The one base class of the errors a user can fix, and warning lines.

Every layer raises subclasses of `UserError` for inputs the user controls (a
config value, a path, a checkpoint); the command line catches `UserError`
once and prints `<kind> error: message` with no traceback. Anything else is
a bug and keeps its traceback. This module imports nothing of the project,
so every layer can use it.
"""

from __future__ import annotations

import logging

# The logger of our own lines; the command line shows it on the screen
# (iiet_jax/cli/logs.py) while library loggers go to the run's log file.
LOGGER = "iiet"


class UserError(Exception):
  """An error the user can fix; the message names the value and the fix."""

  kind = "Input"  # the label: "<kind> error: ..."


def warn(message: str) -> None:
  """A warning the user should see (screen and log file)."""
  logging.getLogger(LOGGER).warning("warning    %s", message)


class MissingInputError(UserError, FileNotFoundError):
  """A corpus, tokenizer or record file the config names does not exist."""

  kind = "Data"


class TokenizerError(UserError, ValueError):
  """A tokenizer that cannot be used as requested."""

  kind = "Data"
