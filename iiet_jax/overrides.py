"""Config files and `--config.KEY=VALUE` overrides on the command line.

absl parses the overrides; this module checks them first, so an unknown key
is reported with the closest valid ones instead of a bare KeyError.
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


def load_config_file(spec: str) -> tuple[ml_collections.ConfigDict, object]:
  """`path.py[:arg]` -> (get_config(arg), the module)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise OverrideError(f"--config={spec}: no config file at {path}.")
  module_spec = importlib.util.spec_from_file_location(
      "iiet_config_" + os.path.basename(path).removesuffix(".py"), path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  return config, module


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


def without_sequences(argv: Sequence[str], spec: str | None) -> list[str]:
  """argv for absl: the sequence overrides are applied by
  `apply_sequences` after parsing."""
  drop = {arg for arg, _, _ in _sequence_overrides(argv)} if spec else set()
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
