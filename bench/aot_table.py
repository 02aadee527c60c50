"""Runs `python -m iiet_jax.aot` over architectures x sizes x topologies.

  python bench/aot_table.py [--out=docs/aot_memory.md] [--sizes=340m,740m,1.3b]
  python bench/aot_table.py --attention=splash --keep   # add splash rows
  python bench/aot_table.py --remat=per_evaluation --keep --models=iiet

Global batch 256 x 2048, FSDP over all chips, full remat unless --remat says
otherwise. For each entry the
micro-batch counts are tried in order and the first that fits in HBM is kept;
every attempt is listed. Results stream to OUT.jsonl as they arrive.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOPOLOGIES = {"v5e-16": "v5e:4x4", "v4-32": "v4:2x2x4"}


def attempt(model: str, size: str, topology: str, micro: int,
            attention: str = "xla", remat: str = "full") -> dict:
  cmd = [sys.executable, "-m", "iiet_jax.aot",
         f"--config=configs/lm.py:model={model},size={size}",
         f"--topology={topology}", "--config.mesh.data=1",
         "--config.mesh.fsdp=-1", "--config.sharding.preset=fsdp",
         f"--config.model.remat_policy={remat}", "--config.batch_size=256",
         "--config.seq_len=2048", f"--config.micro_batches={micro}",
         f"--config.model.attention_impl={attention}"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  try:
    result = json.loads(out.stdout.strip().splitlines()[-1])
  except (IndexError, json.JSONDecodeError):
    result = {"topology": topology, "micro_batches": micro,
              "error": out.stderr.strip()[-400:]}
  result.update(model=model, size=size, attention=attention, remat=remat)
  return result


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default="docs/aot_memory.md")
  parser.add_argument("--models", default="transformer,pcformer,iiet")
  parser.add_argument("--sizes", default="340m,740m,1.3b")
  parser.add_argument("--chips", default=",".join(TOPOLOGIES))
  parser.add_argument("--micro", default="4,8,16")
  parser.add_argument("--attention", default="xla",
                      help="model.attention_impl of the rows: xla or splash "
                      "(the Pallas kernel, compiled by libtpu's Mosaic)")
  parser.add_argument("--remat", default="full",
                      help="model.remat_policy of the rows (full, "
                      "per_evaluation, ...)")
  parser.add_argument("--render", action="store_true",
                      help="only rebuild OUT from the rows in OUT.jsonl")
  parser.add_argument("--keep", action="store_true",
                      help="keep earlier rows of OUT.jsonl; new rows replace "
                      "those with the same chips, model, size, micro-batches")
  args = parser.parse_args()
  out = Path(args.out)
  jsonl = out.with_suffix(".jsonl")
  keep = args.keep or args.render
  rows = ([json.loads(line) for line in jsonl.read_text().splitlines()]
          if keep and jsonl.exists() else [])
  stream = jsonl.open("a" if keep else "w")
  for name in [] if args.render else args.chips.split(","):
    topology = TOPOLOGIES[name]
    for size in args.sizes.split(","):
      for model in args.models.split(","):
        for micro in (int(m) for m in args.micro.split(",")):
          r = attempt(model, size, topology, micro, args.attention,
                      args.remat)
          r["name"] = name
          stream.write(json.dumps(r) + "\n")
          stream.flush()
          status = (r["error"][-160:] if "error" in r else
                    f"{r['total_gib']:.2f}/{r['hbm_gib']} GiB "
                    f"{'fits' if r['fits'] else 'too big'} "
                    f"({r['compile_s']}s)")
          print(f"{name} {model} {size} {args.attention} {args.remat} "
                f"micro={micro}: "
                f"{status}", flush=True)
          rows.append(r)
          if r.get("fits"):
            break
  latest = {}
  for r in rows:
    latest[(r["name"], r["model"], r["size"], r.get("attention", "xla"),
            r.get("remat", "full"), r["micro_batches"])] = r
  lines = ["| chips | model | size | attention | remat | micro-batches | "
           "args GiB | temp GiB | total GiB | HBM GiB | fits | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in latest.values():
    if "error" in r:
      lines.append(f"| {r['name']} | {r['model']} | {r['size']} | "
                   f"{r.get('attention', 'xla')} | {r.get('remat', 'full')} | "
                   f"{r['micro_batches']} | | | | | no: "
                   f"{r['error'][-200:]} | |")
      continue
    lines.append(
        f"| {r['name']} | {r['model']} | {r['size']} | "
        f"{r.get('attention', 'xla')} | {r.get('remat', 'full')} | "
        f"{r['micro_batches']} | "
        f"{r['argument_gib']:.2f} | {r['temp_gib']:.2f} | "
        f"{r['total_gib']:.2f} | {r['hbm_gib']} | "
        f"{'yes' if r['fits'] else 'no'} | {r['compile_s']} |")
  header = [
      "# Train-step memory on TPU topologies (ahead-of-time compile)", "",
      "Produced on a CPU host by `python bench/aot_table.py` (each row is one",
      "`python -m iiet_jax.aot` run against libtpu's topology description).",
      "Global batch 256 x 2048 tokens, FSDP over all chips (`mesh.data=1,",
      "mesh.fsdp=-1`, rules `fsdp`), float32 parameters and Adam",
      "moments, bfloat16 compute, IIET r = 3, PCformer order 2. Micro-batch",
      "counts are tried in the order 4, 8, 16 and the first that fits is the",
      "last row of its group. Memory is per device: arguments (parameters,",
      "optimizer state, batch) + outputs - donated aliases + XLA temporaries.",
      "v5e-16 = `v5e:4x4` (15.75 GiB usable HBM per chip); v4-32 = `v4:2x2x4`",
      "in megacore mode (16 chips, 30.75 GiB each). `attention`: the",
      "kernel (`model.attention_impl`; splash rows: `--attention=splash`);",
      "`remat`: `model.remat_policy` (`--remat`, default full).",
      ""]
  out.write_text("\n".join(header + lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
