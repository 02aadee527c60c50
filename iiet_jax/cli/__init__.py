"""The command line: `iiet COMMAND [--FLAG=VALUE ...]` (also
`python -m iiet_jax.main COMMAND`). `iiet --help` lists the commands and
`iiet COMMAND --help` a command's flags (cli/flags.py).

This package only parses, calls one library function per command
(cli/commands.py) and prints. Every error a user can fix is a
`iiet_jax.errors.UserError`, caught here once and printed as
`<kind> error: message` with a non-zero exit and no traceback; library logs
go to WORKDIR/iiet.log (cli/logs.py).
"""

from __future__ import annotations

import sys

from iiet_jax import hostenv
from iiet_jax.cli import flags as cli_flags
from iiet_jax.cli import logs

HELP = ("--help", "-h", "--helpshort", "--helpfull", "-?")


def _command(argv: list[str]) -> str:
  """Takes the command out of argv (default: train)."""
  from iiet_jax.cli.commands import UsageError
  if len(argv) > 1 and not argv[1].startswith("-"):
    command = argv.pop(1)
    if command not in cli_flags.COMMANDS:
      raise UsageError(f"Unknown command {command!r}; choose one of "
                       f"{', '.join(cli_flags.COMMANDS)} (`iiet --help` "
                       f"says what each does).")
    return command
  return "train"


def _parse(command: str, argv: list[str]):
  """absl-parses argv for `command`, then loads its config (with the
  `--config.*` overrides absl never sees); returns (flags, positional args,
  config or None)."""
  from absl import flags
  from iiet_jax import overrides
  from iiet_jax.cli.commands import UsageError
  spec = overrides.config_spec(argv)
  given = overrides.config_args(argv)
  cli_flags.define(command)
  try:
    rest = flags.FLAGS(overrides.without_overrides(argv))
  except flags.Error as err:
    message = str(err).split("\n")[0]
    if message.startswith("flag --config"):
      raise overrides.OverrideError(message) from None
    raise UsageError(f"{message} (`iiet {command} --help` lists its "
                     f"flags).") from None
  if len(rest) > 1 and command != "plot":
    raise UsageError(f"Unexpected arguments {rest[1:]}: flags are written "
                     f"--NAME=VALUE (`iiet {command} --help` lists them).")
  if given and not spec:
    raise UsageError(f"{given[0]} overrides a config, but no --config=FILE "
                     f"names one (`iiet {command} --help` lists the flags).")
  config = overrides.load(spec, given) if spec else None
  return flags.FLAGS, rest[1:], config


def main(argv: list[str]) -> int:
  """Runs one command; returns the exit code."""
  from iiet_jax.errors import Exit, UserError
  try:
    named = len(argv) > 1 and not argv[1].startswith("-")
    command = _command(argv)
    if any(a in HELP for a in argv[1:]):
      print(cli_flags.command_help(command) if named
            else cli_flags.overview())
      return 0
    if command == "distill":
      argv.append("--config.stage=distill")
    sys.argv = argv
    F, rest, config = _parse(command, argv)
    from iiet_jax.cli import commands
    if command == "plot":
      code = commands.plot(F, rest)
    elif any(f.kind == "config" for f in cli_flags.COMMANDS[command].flags):
      code = commands.HANDLERS[command](F, config)
    else:
      code = commands.HANDLERS[command](F)
    return Exit.FINISHED if code is None else code
  except UserError as err:
    print(f"{err.kind} error: {err}", file=sys.stderr)
    return err.exit_code
  except OSError as err:  # a path the user gave: unwritable, missing, full
    print(f"File error: {file_error(err)}", file=sys.stderr)
    return Exit.BAD_INPUT
  except KeyboardInterrupt:
    print("\nInterrupted: stopped at once, without saving; a run resumes "
          "from its newest checkpoint when the command is run again.",
          file=sys.stderr)
    return Exit.INTERRUPTED
  finally:
    logs.close()


def file_error(err: OSError) -> str:
  """An OSError as one line: the path first, then what is wrong and a fix."""
  import errno
  what = err.strerror or str(err)
  path = err.filename
  fixes = {errno.EACCES: "choose a path this user may write, or change its "
                         "permissions",
           errno.EROFS: "choose a path on a writable disk",
           errno.ENOTDIR: "a part of the path is a file, not a folder; "
                          "choose another path",
           errno.ENOENT: "check the path (a missing folder, or a link to "
                         "one)",
           errno.ENOSPC: "free space on that disk or choose another",
           errno.EISDIR: "give a file name, not a folder",
           errno.EEXIST: "a file stands where a folder is needed; choose "
                         "another path"}
  fix = fixes.get(err.errno, "check the path and try again")
  if path is None:
    return f"{what}; {fix}."
  return f"{path}: {what.lower() if what[:1].isupper() else what}; {fix}."


def run(argv: list[str] | None = None) -> None:
  """Console script `iiet` (pyproject.toml) and `python -m iiet_jax.main`."""
  if argv is None:  # the process entry point, not a call from Python
    hostenv.reexec_with_huge_pages()
  logs.quiet_cpu_host()
  logs.setup()
  code = main(list(sys.argv if argv is None else argv))
  if code:
    sys.exit(int(code))
