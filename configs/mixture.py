"""configs/lm.py's models trained on a weighted mixture of sources.

  --config=configs/mixture.py:model=iiet,size=340m,root=/data/slimpajama

Each source is ROOT/<name> (every .jsonl.zst / .jsonl.gz / .jsonl / .parquet
file under it), weighted by its share of SlimPajama's tokens; change a share
with --config.data.mixture.RedPajamaGithub.weight=10 (shares need not sum to
100). A mixture is read from token shards, so prepare them first with the
same flags:

  iiet prepare --config=configs/mixture.py:...,root=ROOT [--workers=8]
  iiet train   --config=configs/mixture.py:...,root=ROOT --workdir=DIR

SlimPajama as published keeps its sources mixed inside every file (the
`meta.redpajama_set_name` of each line), in its own proportions; train on it
as one files source (configs/lm.py, data.paths=ROOT/train/**/*.jsonl.zst).
This config is for sources kept in their own folders, as in
`python -m iiet_jax.data.sample_corpus ROOT`.
"""

from __future__ import annotations

import os

from iiet_jax import overrides
from iiet_jax.data.sample_corpus import SLIMPAJAMA


LM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lm.py")


def get_config(arg: str | None = None):
  values = overrides.parse_arg(
      arg, {"model": "iiet", "size": "tiny", "root": ""},
      "configs/mixture.py", "model=NAME,size=SIZE,root=DIR (model and size "
      "as in configs/lm.py)")
  if not values["root"]:
    raise ValueError("configs/mixture.py needs root=DIR, the folder holding "
                     "one folder per source (e.g. configs/mixture.py:"
                     "model=iiet,size=tiny,root=/data/slimpajama).")
  config, _ = overrides.load_config_file(
      f"{LM}:model={values['model']},size={values['size']}")
  root = os.path.abspath(os.path.expanduser(values["root"]))
  config.variant += f",root={root}"
  config.data.source = "files"
  config.data.mixture = {name: {"paths": (os.path.join(root, name),),
                                "weight": share}
                         for name, share in SLIMPAJAMA.items()}
  return config
