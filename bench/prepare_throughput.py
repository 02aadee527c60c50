"""`iiet prepare` tokens/s with 1 and 2 worker processes, and the training
pipeline's tokens/s per host against what 340M models consume on v5e-16.

  python bench/prepare_throughput.py [--copies=3] [--repeats=2] [--mfu=0.5]

1. A SlimPajama-shaped corpus (iiet_jax/data/sample_corpus.py: seven
   .jsonl.zst sources and a Parquet one) of the standard library's modules,
   `copies` times over. A tokenizer of `vocab` pieces is trained once on it
   (timed apart) and given to every preparation.
2. `iiet prepare` (its own process, timed whole, start-up included) into a
   fresh folder with 1 and with 2 Beam worker processes, alternating,
   `repeats` times each; the median tokens/s of each, the
   scaling between them and, from the efficiency per worker that 2 workers
   reach, the projection to N workers (each on its own core: Dataflow, or a
   larger machine) and the hours to prepare the paper's 16B tokens.
3. The training pipeline on the prepared mixture (SlimPajama's weights) with
   the per-host batch of the 340M recipe on v5e-16: 256 x 2048 tokens over 4
   hosts of 4 chips, so 64 rows per host; first_fit and concat packing.
4. What a v5e-16 host consumes: FLOPs per token from the ahead-of-time
   compile records of docs/aot_memory.jsonl (`analytic_tflop_per_device`:
   XLA's own count, `compiled_tflop_per_device`, counts each loop body once,
   so the scanned layers and micro-batches are undercounted), at an assumed
   MFU (`--mfu`, default 0.5) of the v5e's 197 bf16 TFLOP/s.

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iiet_jax import overrides  # noqa: E402
from iiet_jax.data import pipeline as pl  # noqa: E402
from iiet_jax.data import sample_corpus  # noqa: E402
from iiet_jax.data import sources  # noqa: E402
from iiet_jax.data import token_shards  # noqa: E402
from iiet_jax.data import tokenizer as tok_lib  # noqa: E402

PAPER_TOKENS = 16e9          # 30k steps x 256 x 2048 (the paper's 340M run)
HOSTS, CHIPS_PER_HOST = 4, 4  # v5e-16 (v5litepod-16): 4 VMs of 4 chips


def _config(root: Path, data_dir: Path, tokenizer: str, vocab: int):
  config = overrides.load(f"{ROOT / 'configs' / 'mixture.py'}:model=iiet,"
                          f"size=340m,root={root}")
  config.model.vocab_size = vocab
  config.data.data_dir, config.data.tokenizer = str(data_dir), tokenizer
  config.data.workers = 0
  return config


def _prepare(root: Path, data_dir: Path, tokenizer: str, vocab: int,
             workers: int) -> dict:
  """`iiet prepare` as a user runs it, in its own process (timed whole)."""
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "iiet_jax.main", "prepare",
                  f"--config=configs/mixture.py:model=iiet,size=340m,"
                  f"root={root}", f"--config.data.data_dir={data_dir}",
                  f"--config.data.tokenizer={tokenizer}",
                  f"--config.model.vocab_size={vocab}",
                  f"--workers={workers}"], cwd=ROOT, check=True,
                 capture_output=True)
  seconds = time.perf_counter() - start
  config = _config(root, data_dir, tokenizer, vocab)
  metadata = token_shards.read_metadata(token_shards.location(config.data))
  tokens = sum(e[s]["tokens"] for e in metadata["sources"].values()
               for s in ("train", "validation"))
  return {"seconds": seconds, "tokens": tokens, "tokens_per_s":
          tokens / seconds}


def _pipeline(config, packing: str, batches: int) -> float:
  inputs = sources.open_inputs(config.data, config.model.vocab_size)
  spec = pl.PipelineConfig(batch_size=config.batch_size // HOSTS,
                           seq_len=config.seq_len, packing=packing)
  it = iter(pl.train_dataset(inputs.train, inputs.to_ids, spec,
                             sources=inputs.sources, rates=inputs.rates))
  for _ in range(3):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * spec.batch_size * spec.seq_len / (
      time.perf_counter() - start)


def _consumed(mfu: float) -> dict:
  rows = [json.loads(line) for line in
          (ROOT / "docs" / "aot_memory.jsonl").read_text().splitlines()]
  out = {}
  for row in rows:
    if (row.get("name") != "v5e-16" or row["size"] != "340m"
        or "analytic_tflop_per_device" not in row or row["model"] in out):
      continue
    tokens = 256 * 2048
    per_token = (row["analytic_tflop_per_device"] * 1e12 * row["devices"]
                 / tokens)
    per_chip = mfu * row["peak_tflops"] * 1e12 / per_token
    out[row["model"]] = {
        "flop_per_token": per_token,
        "compiled_flop_per_token": (row["compiled_tflop_per_device"] * 1e12
                                    * row["devices"] / tokens),
        "tokens_per_s_per_host": per_chip * CHIPS_PER_HOST}
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--copies", type=int, default=3,
                      help="times the standard library is repeated")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--vocab", type=int, default=8192)
  parser.add_argument("--batches", type=int, default=20)
  parser.add_argument("--mfu", type=float, default=0.5)
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    texts = sample_corpus.stdlib_texts() * args.copies
    files = sample_corpus.write(str(tmp / "corpus"), files_per_source=8,
                                docs_per_file=len(texts) // 64, texts=texts)
    size = sum(os.path.getsize(f) for fs in files.values() for f in fs)
    print(f"corpus     {sum(map(len, files.values()))} files, {size / 2**20:.1f}"
          f" MiB compressed, {len(texts):,} documents")
    start = time.perf_counter()
    tok_path = tmp / "tokenizer.model"
    tok_lib.train_tokenizer(texts, args.vocab, tok_path,
                            max_chars=20_000_000)
    tok_seconds = time.perf_counter() - start
    print(f"tokenizer  {args.vocab} pieces trained in {tok_seconds:.1f} s")

    runs = {1: [], 2: []}
    for r in range(args.repeats):
      for workers in (1, 2):
        result = _prepare(tmp / "corpus", tmp / f"out-{workers}-{r}",
                          str(tok_path), args.vocab, workers)
        runs[workers].append(result)
        print(f"prepare    {workers} worker(s), run {r}: {result['tokens']:,} "
              f"tokens in {result['seconds']:.1f} s = "
              f"{result['tokens_per_s']:,.0f} tokens/s")
    tps = {w: statistics.median(x["tokens_per_s"] for x in v)
           for w, v in runs.items()}
    scaling = tps[2] / tps[1]
    efficiency = scaling / 2
    projection = {n: n * tps[1] * efficiency for n in (1, 2, 16, 64, 256)}
    print(f"scaling    2 workers / 1 = {scaling:.2f}x (efficiency per worker "
          f"{efficiency:.2f})")
    for n, rate in projection.items():
      print(f"projected  {n:4d} workers: {rate:,.0f} tokens/s, the paper's "
            f"16B tokens in {PAPER_TOKENS / rate / 3600:,.1f} h")

    config = _config(tmp / "corpus", tmp / "out-1-0", str(tok_path),
                     args.vocab)
    pipeline = {p: _pipeline(config, p, args.batches)
                for p in ("first_fit", "concat")}
  consumed = _consumed(args.mfu)
  for packing, rate in pipeline.items():
    print(f"pipeline   {packing}: {rate:,.0f} tokens/s per host "
          f"(64 x 2048 rows, one process)")
  for model, c in consumed.items():
    print(f"consumed   340m {model} on v5e-16 at MFU {args.mfu}: "
          f"{c['tokens_per_s_per_host']:,.0f} tokens/s per host "
          f"({c['flop_per_token'] / 1e9:.2f} GFLOP/token); the pipeline "
          f"gives {min(pipeline.values()) / c['tokens_per_s_per_host']:.1f}x")
  print(json.dumps({
      "prepare_tokens_per_s": tps, "scaling_2_over_1": scaling,
      "projected_tokens_per_s": projection,
      "tokenizer_train_s": tok_seconds, "vocab": args.vocab,
      "pipeline_tokens_per_s_per_host": pipeline,
      "consumed_tokens_per_s_per_host": {
          m: c["tokens_per_s_per_host"] for m, c in consumed.items()},
      "mfu_assumed": args.mfu, "runs": runs}))


if __name__ == "__main__":
  main()
