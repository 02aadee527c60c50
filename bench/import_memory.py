"""Peak resident memory of `iiet import` against the folder's size on disk.

  python bench/import_memory.py [--size=55m] [--shard=30MB] [--dtype=bfloat16]
      [--dir=/tmp/iiet_import_memory]

Builds the Transformer++ of configs/lm.py at `--size` as a stock transformers
LlamaForCausalLM with random weights, saves it with save_pretrained in
shards of `--shard`, then runs, each under `/usr/bin/time -v` (Maximum
resident set size):

  baseline  python -c "import iiet_jax.main, jax, jax.numpy as jnp; jnp.zeros(1)"
  import    python -m iiet_jax.main import --hf=DIR --workdir=NEW

and, in one more process, the import's phases with the peak RSS after each
(the folder's headers read; every parameter placed in float32; the Orbax
save), to show what dominates. Prints a table; the last line is one JSON
object with the figures. Takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "import iiet_jax.main, jax, jax.numpy as jnp; jnp.zeros(1)"
# The import's steps one by one, printing the peak RSS (MiB) after each.
PHASES = """
import resource, sys
from pathlib import Path
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
import jax, jax.numpy as jnp
from iiet_jax.export import hf_folder, names, tensor_file
from iiet_jax.models import ModelConfig
from iiet_jax import checkpoint as ckpt_lib
from iiet_jax.overrides import with_model
import json
jnp.zeros(1)
print("phase imports", peak())
src, out = Path(sys.argv[1]), Path(sys.argv[2])
folder = tensor_file.Folder(src)
fields = names.model_config(json.loads((src / "config.json").read_text()))
config = hf_folder._base_config(fields["arch"])
cfg = ModelConfig.from_dict({**config.model.to_dict(), **fields})
config = with_model(config, cfg)
print("phase headers", peak())
from iiet_jax.models import build_model
from iiet_jax.parallel import sharding as shd
mesh, rules = shd.from_config(config)
params = names.from_hf(folder, cfg, shd.placed_params(
    build_model(cfg), mesh, rules, config.seq_len))
jax.block_until_ready(params)
print("phase placed", peak())
ckpt_lib.save_params(out / "checkpoints", 0, params, config.to_dict(),
                     ckpt_lib.describe(cfg, cfg.arch))
print("phase saved", peak())
"""


def model_fields(size: str) -> dict:
  from iiet_jax import overrides
  return overrides.load(f"{ROOT / 'configs' / 'lm.py'}:model=transformer,"
                        f"size={size}").model.to_dict()


def save_llama(folder: Path, size: str, shard: str, dtype: str) -> int:
  """The stock Llama of `size` saved in shards; returns its parameters."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM
  from iiet_jax.export import names
  from iiet_jax.models import ModelConfig
  # Our config.json writer gives the same fields save_pretrained would.
  config = LlamaConfig.from_dict(names.hf_config(
      ModelConfig.from_dict(model_fields(size)), dtype=dtype))
  torch.manual_seed(0)
  model = LlamaForCausalLM(config).to(getattr(torch, dtype))
  model.save_pretrained(folder, max_shard_size=shard)
  return model.num_parameters()


def max_rss_mib(cmd: list[str], env: dict) -> tuple[float, str]:
  res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True,
                       text=True, env=env, cwd=ROOT)
  if res.returncode:
    sys.exit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
  kb = re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr)
  return int(kb[1]) / 1024, res.stdout


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="55m")
  parser.add_argument("--shard", default="30MB")
  parser.add_argument("--dtype", default="bfloat16",
                      choices=["bfloat16", "float16", "float32"])
  parser.add_argument("--dir", default="/tmp/iiet_import_memory")
  args = parser.parse_args()
  work = Path(args.dir)
  shutil.rmtree(work, ignore_errors=True)
  work.mkdir(parents=True)
  hf = work / "hf"
  count = save_llama(hf, args.size, args.shard, args.dtype)
  shards = sorted(hf.glob("*.safetensors"))
  disk = sum(p.stat().st_size for p in shards) / 2 ** 20
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  base, _ = max_rss_mib([sys.executable, "-c", BASELINE], env)
  full, _ = max_rss_mib([sys.executable, "-m", "iiet_jax.main", "import",
                         f"--hf={hf}", f"--workdir={work / 'run'}"], env)
  _, text = max_rss_mib([sys.executable, "-c", PHASES, str(hf),
                         str(work / "phases")], env)
  phases = {k: float(v) for k, v in re.findall(r"phase (\w+) ([\d.]+)",
                                               text)}
  f32 = count * 4 / 2 ** 20
  rows = [("parameters", f"{count:,}"),
          (f"on disk ({len(shards)} shards, {args.dtype})", f"{disk:.1f}"),
          ("float32 parameters", f"{f32:.1f}"),
          ("baseline RSS (import iiet_jax, jax)", f"{base:.1f}"),
          ("iiet import peak RSS", f"{full:.1f}"),
          ("  minus baseline", f"{full - base:.1f}"),
          *((f"  phases: peak after {k}", f"{v:.1f}")
            for k, v in phases.items())]
  print(f"{'Transformer++ ' + args.size + ' import':<44} MiB")
  for name, value in rows:
    print(f"{name:<44} {value}")
  print(json.dumps(dict(size=args.size, parameters=count, shards=len(shards),
                        dtype=args.dtype, disk_mib=disk, float32_mib=f32,
                        baseline_rss_mib=base, import_rss_mib=full,
                        phases_rss_mib=phases)))


if __name__ == "__main__":
  main()
