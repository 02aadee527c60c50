"""The one config loader: a config file and its `--config.KEY=VALUE`
overrides, for the command line, aot, sweeps, configs/reproduce.py, the
benchmarks and the tests.

  config = load("configs/lm.py:model=iiet,size=tiny",
                ["--config.total_steps=40"])       # or {"total_steps": 40}

Every key is checked first, so an unknown one is reported with the closest
valid keys instead of a bare KeyError; ml_collections' config_flags converts
the values by the type each field has (on a flag set of its own, never
absl's global one); per-layer lists (`--config.model.iterations=3,1,1,1`)
are applied after it, as absl would read them as one int.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from typing import Sequence

import ml_collections

from iiet_jax.errors import UserError


class OverrideError(UserError, ValueError):
  """A command line naming config keys that do not exist."""

  kind = "Config"


def load_module(path: str, what: str | None = None):
  """The Python file `path` as a module (a config file, or a helper a
  config file imports from beside it); its errors name the file."""
  what = what or path
  if not os.path.isfile(path):
    raise OverrideError(f"--config={what}: no config file at {path}.")
  module_spec = importlib.util.spec_from_file_location(
      "iiet_config_" + os.path.basename(path).removesuffix(".py"), path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as err:  # a syntax error, a failing import: the file's
    raise OverrideError(f"--config={what}: {path} cannot be loaded "
                        f"({type(err).__name__}: {err}).") from None
  return module


def load_config_file(spec: str) -> tuple[ml_collections.ConfigDict, object]:
  """`path.py[:arg]` -> (get_config(arg), the module), no overrides."""
  path, _, arg = spec.partition(":")
  module = load_module(path, spec)
  if not callable(getattr(module, "get_config", None)):
    raise OverrideError(f"--config={spec}: {path} defines no get_config(); "
                        f"a config file returns its ConfigDict from "
                        f"get_config(arg=None).")
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except UserError:
    raise
  except (ValueError, KeyError, TypeError) as err:
    raise OverrideError(f"--config={spec}: {err}") from None
  return config, module


def _split(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(the `--config.KEY=VALUE` / `--config.KEY VALUE` items, the rest)."""
  overrides, rest, argv = [], [], list(argv)
  value_next = False
  for i, arg in enumerate(argv):
    if value_next:
      overrides.append(arg)
      value_next = False
    elif arg.startswith("--config."):
      overrides.append(arg)
      value_next = ("=" not in arg and i + 1 < len(argv)
                    and not argv[i + 1].startswith("--"))
    else:
      rest.append(arg)
  return overrides, rest


def config_args(argv: Sequence[str]) -> list[str]:
  """The `--config.KEY=VALUE` (and `--config.KEY VALUE`) items of argv."""
  return _split(argv)[0]


def without_overrides(argv: Sequence[str]) -> list[str]:
  """argv less its overrides (`--config=SPEC` stays): what absl parses, as
  the overrides go to `load`."""
  return _split(argv)[1]


def load(spec: str, args=()) -> ml_collections.ConfigDict:
  """`get_config` of `path.py[:arg]` with the overrides `args` applied:
  `--config.KEY=VALUE` strings or a {KEY: value} dict. Locked: a key the
  config lacks cannot be set later by mistake."""
  from absl import flags
  from ml_collections import config_flags
  config, _ = load_config_file(spec)   # the file's own errors, named
  if isinstance(args, dict):
    args = override_args(args)
  args = list(args)
  check_keys(config, override_keys(args))
  argv = ["iiet", *without_sequences(args)]
  values = flags.FlagValues()
  config_flags.DEFINE_config_dict("config", config, "", flag_values=values,
                                  lock_config=True, sys_argv=argv)
  try:
    values(argv)
  except flags.Error as err:
    raise OverrideError(_plain(str(err).split("\n")[0], config)) from None
  return apply_sequences(values.config, args)


# What a value of each type is written as, for the error line.
_TYPE_WORDS = {bool: "true or false", int: "a whole number",
               float: "a number", str: "a string"}


def _plain(message: str, config) -> str:
  """absl's "flag --config.K=V: <parser's text>" as the key, the value and
  what that key takes, e.g. "a whole number (per layer: 3,1,1,1)"."""
  head, sep, _ = message.partition(": ")
  if not sep or not head.startswith("flag --config."):
    return message
  key, _, value = head[len("flag --config."):].partition("=")
  node = config
  for part in key.split("."):
    node = node.get(part) if hasattr(node, "get") else None
  kind = type(node)
  if isinstance(node, (tuple, list)):
    each = _TYPE_WORDS.get(type(node[0]), "a value") if node else "a value"
    what = f"{each}, or one per layer separated by commas"
  else:
    what = _TYPE_WORDS.get(kind, f"a {kind.__name__}")
  return (f"--config.{key}={value} is not {what}; e.g. "
          f"--config.{key}={_example(node)}.")


def _example(node) -> str:
  if isinstance(node, bool):
    return "true" if not node else "false"
  if isinstance(node, (tuple, list)):
    return ",".join(str(v) for v in node) or "1,1"
  return str(node)


def parse_arg(arg: str | None, defaults: dict[str, str], where: str,
              usage: str, choices: dict[str, Sequence[str]] | None = None
              ) -> dict[str, str]:
  """A config file's argument ('model=iiet,size=tiny', after the `:` of
  --config) -> `defaults` updated with its items; an unknown key, an item
  without `=` or a value outside its `choices` is a ValueError naming it."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in values:
      raise ValueError(f"{where} got {item!r}; expected {usage}.")
    values[key] = value
  for key, allowed in (choices or {}).items():
    if values[key] not in allowed:
      raise ValueError(f"{where}: {key}={values[key]!r} is unknown; choose "
                       f"one of {', '.join(allowed)}.")
  return values


def flat_keys(config, prefix: str = "") -> list[str]:
  keys = []
  for key, value in config.items():
    name = f"{prefix}{key}"
    keys.append(name)
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      keys.extend(flat_keys(value, name + "."))
  return keys


def override_keys(argv: Sequence[str]) -> list[str]:
  """The KEYs of every `--config.KEY=VALUE` / `--config.KEY VALUE`."""
  keys = []
  for arg in argv:
    if arg.startswith("--config."):
      keys.append(arg[len("--config."):].split("=", 1)[0])
  return keys


def config_spec(argv: Sequence[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def check_keys(config, keys: Sequence[str]) -> None:
  """Fails on the first key `config` lacks, naming the closest ones."""
  valid = flat_keys(config)
  for key in keys:
    if key in valid:
      continue
    close = difflib.get_close_matches(key, valid, n=5, cutoff=0.5)
    if not close:  # e.g. a typo in the last part only: match within its block
      parent = key.rpartition(".")[0]
      close = [k for k in valid if parent and k.startswith(parent + ".")][:8]
    hint = f" Closest valid keys: {', '.join(close)}." if close else ""
    raise OverrideError(f"--config.{key}: no such config key.{hint}")


def override_args(overrides: dict) -> list[str]:
  """{"model.iterations": (1, 2)} -> ["--config.model.iterations=(1, 2)"]."""
  return [f"--config.{k}={v if isinstance(v, str) else repr(v)}"
          for k, v in overrides.items()]


def sequence_keys() -> tuple[str, ...]:
  """Config keys that hold an int or one int per layer (ModelConfig fields
  typed `int | tuple[int, ...]`, e.g. model.iterations)."""
  import dataclasses
  from iiet_jax.models.config import ModelConfig
  return tuple(f"model.{f.name}" for f in dataclasses.fields(ModelConfig)
               if "tuple[int" in str(f.type))


def _sequence_overrides(argv: Sequence[str]) -> list[tuple[str, str, str]]:
  """(arg, key, value) of each `--config.KEY=a,b,c` / `=(a,b,c)` of a
  sequence key: absl would parse those as one int and fail."""
  keys = sequence_keys()
  found = []
  for arg in argv:
    if not arg.startswith("--config.") or "=" not in arg:
      continue
    key, value = arg[len("--config."):].split("=", 1)
    if key in keys and any(c in value for c in ",()[]"):
      found.append((arg, key, value))
  return found


def without_sequences(argv: Sequence[str]) -> list[str]:
  """argv for absl: the sequence overrides are applied by
  `apply_sequences` after parsing."""
  drop = {arg for arg, _, _ in _sequence_overrides(argv)}
  return [arg for arg in argv if arg not in drop]


def apply_sequences(config, argv: Sequence[str]):
  """Sets each sequence override on `config` (parsed by absl); returns it."""
  for _, key, value in _sequence_overrides(argv):
    items = [v.strip() for v in value.strip().strip("()[]").split(",")]
    try:
      counts = tuple(int(v) for v in items if v)
    except ValueError:
      raise OverrideError(
          f"--config.{key}={value}: give one integer for every layer or a "
          f"list of integers, one per layer, e.g. --config.{key}=3,1,1,1 "
          f"or --config.{key}='(3,1,1,1)'.") from None
    block, _, name = key.rpartition(".")
    target = config.get(block) if block else config
    with config.ignore_type():
      target[name] = counts[0] if len(counts) == 1 else counts
  return config


def with_model(config, model_cfg) -> ml_collections.ConfigDict:
  """A copy of the run `config` whose `model` block is `model_cfg` (a
  ModelConfig, e.g. rebuilt from a checkpoint's description)."""
  out = config.copy_and_resolve_references()
  with out.unlocked():
    # A whole new block: per-layer iterations are a tuple where the
    # config may hold an int.
    out.model = ml_collections.ConfigDict(model_cfg.to_dict())
  return out
