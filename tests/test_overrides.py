"""The one config loader (iiet_jax/overrides.py): a file, its overrides,
the checks, and the file's own errors named."""

from __future__ import annotations

import pytest

from iiet_jax import overrides as ov
from training import ROOT

LM = f"{ROOT}/configs/lm.py:model=iiet,size=tiny"


def test_overrides_as_strings_or_a_dict_give_the_same_config():
  given = ov.load(LM, ["--config.total_steps=40", "--config.model.iterations"
                       "=3,1,1,1", "--config.optimizer.peak_lr", "2e-3",
                       "--config.history_init=inherit"])
  as_dict = ov.load(LM, {"total_steps": 40, "model.iterations": (3, 1, 1, 1),
                         "optimizer.peak_lr": 2e-3,
                         "history_init": "inherit"})
  assert given.to_dict() == as_dict.to_dict()
  assert (given.total_steps, given.model.iterations, given.optimizer.peak_lr,
          given.history_init) == (40, (3, 1, 1, 1), 2e-3, "inherit")
  plain = ov.load(LM)
  assert plain.total_steps != 40 and plain.history_init == "average"
  with pytest.raises(AttributeError):   # locked: no key made by mistake
    plain.total_step = 3


@pytest.mark.parametrize("args,message", [
    (["--config.total_step=4"], "--config.total_step: no such config key. "
     "Closest valid keys: total_steps"),
    (["--config.total_steps=many"], "--config.total_steps=many is not a "
     "whole number; e.g. --config.total_steps=600"),
    (["--config.model.unroll_iterations=maybe"], "--config.model."
     "unroll_iterations=maybe is not true or false"),
    (["--config.optimizer.peak_lr=fast"], "--config.optimizer.peak_lr=fast "
     "is not a number"),
    (["--config.model.iterations=3,x"], "give one integer for every layer"),
])
def test_bad_overrides_name_the_value(args, message):
  with pytest.raises(ov.OverrideError, match=message.replace(".", r"\.")):
    ov.load(LM, args)


@pytest.mark.parametrize("text,message", [
    ("def get_config(:\n", "cfg.py cannot be loaded (SyntaxError"),
    ("import no_such_module_here\n", "cfg.py cannot be loaded "
     "(ModuleNotFoundError"),
    ("X = 1\n", "cfg.py defines no get_config()"),
    ("def get_config():\n  raise ValueError('bad arg')\n", ": bad arg"),
])
def test_a_broken_config_file_is_named(tmp_path, text, message):
  path = tmp_path / "cfg.py"
  path.write_text(text)
  with pytest.raises(ov.OverrideError) as err:
    ov.load(str(path))
  assert str(err.value).startswith(f"--config={path}")
  assert message in str(err.value)


def test_config_args_and_the_rest_of_a_command_line():
  argv = ["iiet", "--config", "c.py:x", "--config.a=1", "--config.b", "2",
          "--workdir=w", "--config.c=x,y"]
  assert ov.config_spec(argv) == "c.py:x"
  assert ov.config_args(argv) == ["--config.a=1", "--config.b", "2",
                                  "--config.c=x,y"]
  assert ov.without_overrides(argv) == ["iiet", "--config", "c.py:x",
                                        "--workdir=w"]


def test_parse_arg_fills_defaults_and_names_bad_items():
  parse = lambda arg: ov.parse_arg(arg, {"model": "iiet", "size": "tiny"},
                                   "f.py", "model=NAME,size=SIZE",
                                   {"model": ("iiet", "transformer")})
  assert parse(None) == {"model": "iiet", "size": "tiny"}
  assert parse("size=55m") == {"model": "iiet", "size": "55m"}
  with pytest.raises(ValueError, match="f.py got 'arch=iiet'; expected "
                     "model=NAME,size=SIZE"):
    parse("arch=iiet")
  with pytest.raises(ValueError, match="f.py: model='rk9' is unknown; "
                     "choose one of iiet, transformer"):
    parse("model=rk9")
