"""Input-pipeline tokens/s against the tokens/s the models consume.

  python bench/data_throughput.py [--data_dir=~/.cache/iiet_jax/tfds]
      [--workers=0,1,2] [--tokens=1000000] [--models=tiny,55m]

On the embedded stdlib corpus with the tiny config's tokenizer: the Grain
pipeline (shuffle, tokenize, split, pack, batch, prefetch) is read as fast as
possible for each worker count and packing, after a warm-up; beside it, the
train step of the tiny and 55M IIET is timed on one device. The pipeline must
outrun the tiny model's step by at least 10x. Also prints the prepared
corpus's size. The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from iiet_jax.data import pipeline as pl  # noqa: E402
from iiet_jax.data import sources  # noqa: E402
from iiet_jax.train.build import build_training  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_config(arg: str):
  from iiet_jax import overrides
  return overrides.load(f"{ROOT / 'configs' / 'lm.py'}:{arg}")


def corpus_size(inputs) -> dict:
  sizes = {}
  for split in ("train", "validation"):
    source = getattr(inputs, split)
    tokens = sum(len(inputs.to_ids(source[i])) for i in range(len(source)))
    chars = sum(len(source[i]["text"]) for i in range(len(source)))
    sizes[split] = {"documents": len(source), "tokens": tokens,
                    "utf8_bytes": chars}
  return sizes


def pipeline_rate(inputs, spec: pl.PipelineConfig, tokens: int) -> float:
  it = pl.TrainIterator(pl.train_dataset(inputs.train, inputs.to_ids, spec))
  for _ in range(3):  # warm-up: worker start-up, first reads
    next(it)
  per_batch = spec.batch_size * spec.seq_len
  n = max(1, tokens // per_batch)
  start = time.perf_counter()
  for _ in range(n):
    next(it)
  seconds = time.perf_counter() - start
  it.close()
  return n * per_batch / seconds


def model_rate(size: str, batch: int, seq_len: int, steps: int) -> float:
  config = load_config(f"model=iiet,size={size}")
  config.batch_size, config.seq_len, config.mesh.data = batch, seq_len, 1
  config.model.dtype = "float32"  # bf16 is emulated on CPU
  training = build_training(config, devices=jax.devices()[:1])
  state = training.init_state(0)
  rng = np.random.default_rng(0)
  data = {"tokens": rng.integers(0, config.model.vocab_size,
                                 (batch, seq_len)).astype(np.int32)}
  state, m = training.train_step(state, data)  # compile
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, m = training.train_step(state, data)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - start)
  return batch * seq_len / statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", default=sources.DEFAULT_DATA_DIR)
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--tokens", type=int, default=1_000_000)
  parser.add_argument("--models", default="tiny,55m")
  args = parser.parse_args()

  config = load_config("model=iiet,size=tiny")
  config.data.data_dir = args.data_dir
  inputs = sources.open_inputs(config.data, config.model.vocab_size)
  sizes = corpus_size(inputs)
  print(f"corpus {inputs.description}")
  for split, s in sizes.items():
    print(f"  {split:10s} {s['documents']:6,d} documents  {s['tokens']:11,d} "
          f"tokens  {s['utf8_bytes']:12,d} characters")

  rows = []
  for seq_len, batch in ((config.seq_len, config.batch_size), (2048, 8)):
    for packing in pl.PACKINGS:
      for workers in map(int, args.workers.split(",")):
        spec = pl.PipelineConfig(batch_size=batch, seq_len=seq_len,
                                 packing=packing, workers=workers)
        rate = pipeline_rate(inputs, spec, args.tokens)
        rows.append({"seq_len": seq_len, "batch": batch, "packing": packing,
                     "workers": workers, "tokens_per_s": round(rate)})
        print(f"pipeline T={seq_len:5d} B={batch} {packing:9s} workers="
              f"{workers}: {rate:12,.0f} tokens/s", flush=True)

  models = {}
  shapes = {"tiny": (config.batch_size, config.seq_len, 10), "55m": (4, 256, 3)}
  for size in args.models.split(","):
    b, t, steps = shapes[size]
    models[size] = round(model_rate(size, b, t, steps))
    print(f"model  iiet {size:5s} train step (B={b}, T={t}, float32, 1 CPU "
          f"device): {models[size]:10,d} tokens/s", flush=True)

  slowest_tiny = min(r["tokens_per_s"] for r in rows
                     if r["seq_len"] == config.seq_len)
  result = {"corpus": sizes, "pipeline": rows, "model_tokens_per_s": models}
  if "tiny" in models:
    result["slowest_pipeline_over_tiny_model"] = round(
        slowest_tiny / models["tiny"], 1)
    print(f"slowest tiny-shape pipeline / tiny model: "
          f"{result['slowest_pipeline_over_tiny_model']}x (target >= 10x)")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
