"""Whole-run test config: `--config=tests/run_config.py:DIR[,ARCH]`.

A two-layer model on a counting corpus written to DIR (see
`training.run_config`); 8 steps, checkpoints every 2, eval every 4.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from training import run_config  # noqa: E402


def get_config(arg):
  root, _, arch = arg.partition(",")
  pathlib.Path(root).mkdir(parents=True, exist_ok=True)
  return run_config(pathlib.Path(root), arch or "iiet")


def get_sweep(arg):
  del arg
  return [{"model.iterations": 1}, {"model.iterations": 2, "seed": 3}]
