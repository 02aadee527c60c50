"""Prepared token shards: where `iiet prepare` puts a corpus, and how a run
opens it.

  <data_dir>/prepared/<stem>-<hash>/
    tokenizer.model (or tokenizer.json)   the tokenizer that made the shards
    <source>/train-00007.arrayrecord      input file 7 of <source>: its train
    <source>/validation-00007.arrayrecord   and validation documents
    parts/<source>-00007.json             input file 7 done, with its counts
    metadata.json                         everything done: counts per source
                                          and split, shards, tokenizer hash

A record is one document's ids as int32 little-endian bytes with bos and eos
in place (as for data.source="tokens"). Shard k holds the documents of the
k-th file of its source (files sorted by path) in file order, so the output
depends on the input alone, never on how many workers wrote it. A file that
gives a split no document gives it no shard. `metadata.json` is written last:
a folder without it is an unfinished preparation, never read as a corpus.

The folder's name hashes what decides the shards' content except the
tokenizer (paths, text field, validation fraction, max_files and the sources
of a mixture, not its weights), so `iiet train` with the config `iiet prepare`
was given finds them. The tokenizer is recorded instead, and a run whose
data.tokenizer is another is refused.
"""

from __future__ import annotations

import json
import os
from typing import Any

from etils import epath

from iiet_jax.data import mixture as mixture_lib
from iiet_jax.data import shards as shards_lib
from iiet_jax.data import tokenizer as tok_lib
from iiet_jax.data import documents as docs_lib
from iiet_jax.data.documents import CorpusError

METADATA = "metadata.json"
FORMAT = 1


def _text_options(data) -> dict[str, Any]:
  return {"text_field": data.text_field,
          "validation_fraction": float(data.validation_fraction),
          "max_files": data.get("max_files")}


def location(data) -> epath.Path:
  """The prepared folder of `data` (a files source or a mixture)."""
  sources = {name: [p if "://" in p else os.path.abspath(os.path.expanduser(p))
                    for p in paths]
             for name, paths in mixture_lib.sources(data).items()}
  first = next(iter(sources.values()))
  name = docs_lib.folder_name(
      "mixture" if len(sources) > 1 else (first[0] if first else "corpus"),
      {"sources": sources, **_text_options(data), "format": FORMAT})
  root = data.get("data_dir") or docs_lib.DEFAULT_DATA_DIR
  if "://" not in root:
    root = os.path.expanduser(root)
  return epath.Path(root) / "prepared" / name


def shard_name(split: str, index: int) -> str:
  return f"{split}-{index:05d}.arrayrecord"


def part_name(source: str, index: int) -> str:
  return f"parts/{source}-{index:05d}.json"


def read_metadata(folder: epath.Path) -> dict[str, Any] | None:
  """The folder's metadata, None when it is not (completely) prepared."""
  path = folder / METADATA
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as err:
    raise CorpusError(f"{path} is not valid JSON ({err}); run `iiet prepare` "
                      f"again to rewrite it.") from None


def unfinished(folder: epath.Path) -> bool:
  return folder.exists() and not (folder / METADATA).exists()


def check_tokenizer(folder: epath.Path, metadata: dict[str, Any],
                    wanted) -> Any:
  """The tokenizer the shards were made with; `wanted` (the run's, or None
  for "whichever made them") must be that one."""
  made = tok_lib.carried_by(folder)
  if made is None or tok_lib.fingerprint(made) != metadata["tokenizer"]["sha256"]:
    raise CorpusError(
        f"{folder} lacks the tokenizer its metadata names (sha256 "
        f"{metadata['tokenizer']['sha256'][:12]}...); run `iiet prepare` "
        f"again after deleting {folder}.")
  if wanted is not None and tok_lib.fingerprint(wanted) != tok_lib.fingerprint(made):
    raise tok_lib.TokenizerError(
        f"The shards in {folder} were made with the tokenizer "
        f"{metadata['tokenizer']['from']} (sha256 "
        f"{metadata['tokenizer']['sha256'][:12]}...), and this run's "
        f"data.tokenizer={wanted.path} is another (sha256 "
        f"{tok_lib.fingerprint(wanted)[:12]}...): its ids would mean other "
        f"text. Train with that tokenizer (leave data.tokenizer empty to use "
        f"it), or prepare again with this one into another data.data_dir.")
  return made


def open_split(folder: epath.Path, metadata: dict[str, Any], source: str,
               split: str):
  """One source's split as a random-access source of records, every shard
  checked against the count the metadata gives it."""
  entries = metadata["sources"][source][split]["shards"]
  if not entries:
    raise CorpusError(
        f"Source {source!r} of {folder} has no {split} documents "
        f"(validation_fraction={metadata['validation_fraction']}); add "
        f"documents or change the fraction, then prepare again.")
  import grain
  remedy = (f"Delete {folder} and run `iiet prepare` again (or restore the "
            f"file from a copy).")
  files = [shards_lib.Shard(os.fspath(folder / e["path"]), None, e["records"])
           for e in entries]
  checked = [shards_lib.check(f, remedy) for f in files]
  return shards_lib.CheckedSource(
      grain.sources.ArrayRecordDataSource([f.path for f in files]), checked,
      remedy)
