"""A small corpus shaped like SlimPajama, from the standard library's text.

  python -m iiet_jax.data.sample_corpus OUT [--files_per_source=4]
                                            [--docs_per_file=50]

writes OUT/<source>/chunk-NNNN.jsonl.zst for SlimPajama's seven sources
(one JSON object per line: "text" and "meta.redpajama_set_name", as
SlimPajama ships them) and OUT/parquet/chunk-NNNN.parquet (column "text").
The documents are this interpreter's standard-library modules, dealt to the
sources in path order; nothing is downloaded. It exists to try `iiet
prepare` and `data.mixture` locally (README) and for their tests and bench.
"""

from __future__ import annotations

import argparse
import json
import os
import sysconfig
from typing import Sequence

# SlimPajama's sources and their shares of its tokens (percent; the
# SlimPajama-627B dataset card).
SLIMPAJAMA = {"RedPajamaCommonCrawl": 52.2, "RedPajamaC4": 26.7,
              "RedPajamaGithub": 5.2, "RedPajamaBook": 4.2,
              "RedPajamaArXiv": 4.6, "RedPajamaWikipedia": 3.8,
              "RedPajamaStackExchange": 3.3}
PARQUET = "parquet"


def stdlib_texts(limit: int | None = None) -> list[str]:
  """The standard library's .py files (no site-packages), in path order."""
  root = sysconfig.get_paths()["stdlib"]
  paths = []
  for parent, dirs, names in os.walk(root):
    dirs[:] = sorted(d for d in dirs
                     if d not in ("site-packages", "dist-packages",
                                  "__pycache__"))
    paths += [os.path.join(parent, n) for n in sorted(names)
              if n.endswith(".py")]
  texts = []
  for path in sorted(paths)[:limit]:
    with open(path, encoding="utf-8", errors="replace") as f:
      text = f.read()
    if text.strip():
      texts.append(text)
  return texts


def write(out: str, files_per_source: int = 4, docs_per_file: int = 50,
          texts: Sequence[str] | None = None) -> dict[str, list[str]]:
  """Writes the corpus (module doc); returns {source: its files}."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  import zstandard

  names = [*SLIMPAJAMA, PARQUET]
  per_source = files_per_source * docs_per_file
  if texts is None:
    texts = stdlib_texts(per_source * len(names))
  written: dict[str, list[str]] = {}
  for s, name in enumerate(names):
    mine = list(texts[s::len(names)])[:per_source]
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    for f in range(files_per_source):
      docs = mine[f * docs_per_file:(f + 1) * docs_per_file]
      if name == PARQUET:
        path = os.path.join(folder, f"chunk-{f:04d}.parquet")
        pq.write_table(pa.table({"text": docs}), path)
      else:
        path = os.path.join(folder, f"chunk-{f:04d}.jsonl.zst")
        lines = "".join(json.dumps({"text": d, "meta": {
            "redpajama_set_name": name}}) + "\n" for d in docs)
        with open(path, "wb") as fh:
          fh.write(zstandard.ZstdCompressor(level=3).compress(lines.encode()))
      written.setdefault(name, []).append(path)
  return written


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out")
  parser.add_argument("--files_per_source", type=int, default=4)
  parser.add_argument("--docs_per_file", type=int, default=50)
  args = parser.parse_args(argv)
  files = write(args.out, args.files_per_source, args.docs_per_file)
  print(f"wrote {sum(map(len, files.values()))} files of {len(files)} "
        f"sources under {args.out}")


if __name__ == "__main__":
  main()
