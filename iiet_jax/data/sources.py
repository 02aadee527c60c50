"""From a config's `data` block to random-access splits and their tokenizer.

  data.source = "stdlib"   the running Python's standard library (default)
              = "files"    .txt / .jsonl(.gz, .zst) / .parquet: data.paths,
                           or several sources mixed: data.mixture
              = "tfds"     a prepared TFDS dataset: data.tfds_name, data_dir
              = "tokens"   ArrayRecord files of pre-tokenised documents:
                           data.paths (train), data.validation_paths

Text sources are read through TFDS ArrayRecord splits and tokenised by a
SentencePiece model or a tokenizer.json: `data.tokenizer` names a `.model`
or `.json` file, or, when empty, a `.model` of the model's vocabulary size
is trained on the train split and cached beside the prepared data. A
`tokens` record is one document's ids as little-endian int32 bytes
(`write_token_records` writes them), with any bos/eos already in place.

A "files" source that `iiet prepare` has tokenised (token_shards.py) is read
from its token shards, with the tokenizer that made them; otherwise it is
prepared here as a TFDS dataset and tokenised as it is read. A mixture is
always read from prepared shards.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable, Sequence

from etils import epath
import grain
import numpy as np

from iiet_jax.data import corpus
from iiet_jax.data import documents as docs_lib
from iiet_jax.data import mixture as mixture_lib
from iiet_jax.data import pipeline
from iiet_jax.data import shards
from iiet_jax.data import token_shards
from iiet_jax.data import tokenizer as tok_lib
from iiet_jax.errors import MissingInputError

SOURCES = ("stdlib", "files", "tfds", "tokens")
DEFAULT_DATA_DIR = docs_lib.DEFAULT_DATA_DIR


@dataclasses.dataclass
class Inputs:
  """The two splits of a corpus and how a record becomes token ids."""
  train: Any                  # random access: len() and [i]
  validation: Any
  to_ids: Callable[[Any], np.ndarray]
  tokenizer: tok_lib.Tokenizer | None
  description: str
  # A mixture: the sources' names, and their shares of the documents that
  # give data.mixture's token shares; `train` is then a list of sources and
  # `validation` their documents already mixed.
  sources: tuple[str, ...] = ()
  rates: list[float] | None = None


class TokenRecordIds(grain.transforms.Map):
  """An ArrayRecord record of int32 bytes -> its ids."""

  def __call__(self, record: bytes) -> np.ndarray:
    return self.map(record)

  def map(self, record: bytes) -> np.ndarray:
    return np.frombuffer(record, dtype="<i4").astype(np.int32)


def write_token_records(path: epath.PathLike,
                        documents: Iterable[Sequence[int]]) -> int:
  """Writes documents of token ids as one ArrayRecord file; returns count."""
  from array_record.python import array_record_module  # TFDS depends on it.

  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  count = 0
  for ids in documents:
    writer.write(np.asarray(ids, dtype="<i4").tobytes())
    count += 1
  writer.close()
  return count


def _data_dir(data) -> str:
  return os.path.expanduser(data.get("data_dir") or DEFAULT_DATA_DIR)


def _text_builder(data):
  options = dict(validation_fraction=data.validation_fraction)
  if data.source == "stdlib":
    return corpus.python_stdlib_builder(_data_dir(data),
                                        max_files=data.get("max_files"),
                                        **options)
  if not data.paths:
    raise pipeline.PipelineError(
        "data.source='files' needs data.paths: files, directories or globs "
        "of .txt, .jsonl (.jsonl.gz, .jsonl.zst) or .parquet documents.")
  return corpus.text_corpus_builder(
      tuple(data.paths), _data_dir(data), text_field=data.text_field,
      max_files=data.get("max_files"), **options)


def _tfds_builder(data):
  import tensorflow_datasets as tfds
  if not data.tfds_name:
    raise pipeline.PipelineError(
        "data.source='tfds' needs data.tfds_name, e.g. 'c4/en:3.1.0', "
        "prepared as ArrayRecord under data.data_dir.")
  builder = tfds.builder(data.tfds_name, data_dir=_data_dir(data))
  if not builder.is_prepared():
    raise MissingInputError(
        f"TFDS dataset {data.tfds_name!r} is not prepared under "
        f"{_data_dir(data)}; nothing is downloaded at run time. Prepare it "
        f"there (file_format='array_record') or point data.data_dir at it.")
  return builder


def _tokenizer(data, builder, vocab_size: int, text_field: str):
  if data.tokenizer:
    tokenizer = tok_lib.load_tokenizer(data.tokenizer)
  else:
    tokenizer = corpus.corpus_tokenizer(
        builder, vocab_size, text_field,
        max_chars=data.tokenizer_sample_chars)
  tok_lib.check_vocab(tokenizer.vocab_size, vocab_size)
  return tokenizer


def _token_inputs(data, vocab_size: int) -> Inputs:
  if not data.paths or not data.validation_paths:
    raise pipeline.PipelineError(
        "data.source='tokens' needs data.paths (train) and "
        "data.validation_paths: ArrayRecord files of int32 token ids.")
  splits = {}
  for split, paths in (("train", data.paths),
                       ("validation", data.validation_paths)):
    paths = [os.path.expanduser(p) for p in paths]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
      raise MissingInputError(f"Token record files not found: {missing}.")
    splits[split] = shards.open_files(
        paths, "Write it again (sources.write_token_records) or restore it "
        "from a copy.")
  to_ids = TokenRecordIds()
  # Only a sample is read: enough to catch a tokenizer / model mismatch.
  train = splits["train"]
  top = max((int(to_ids.map(train[i]).max(initial=0))
             for i in range(min(len(train), 64))), default=0)
  if top >= vocab_size:
    raise tok_lib.TokenizerError(
        f"{data.paths[0]} holds token id {top}, outside the model's "
        f"vocab_size={vocab_size}. Set model.vocab_size to the tokenizer's "
        f"size.")
  return Inputs(splits["train"], splits["validation"], to_ids, None,
                f"token records {list(data.paths)}")


def _prepared_inputs(data, vocab_size: int, folder, metadata) -> Inputs:
  wanted = tok_lib.load_tokenizer(data.tokenizer) if data.tokenizer else None
  tokenizer = token_shards.check_tokenizer(folder, metadata, wanted)
  tok_lib.check_vocab(tokenizer.vocab_size, vocab_size)
  names = tuple(mixture_lib.sources(data))
  counts = metadata["sources"]
  shares = mixture_lib.weights(data)
  train = [token_shards.open_split(folder, metadata, n, "train")
           for n in names]
  # A small source may give no validation document; the validation pass
  # mixes those that do (with their rates), and needs one at least.
  held = [n for n in names if counts[n]["validation"]["documents"]] \
      if shares else names
  if not held:
    held = names   # open_split's error names the fraction to change
  validation = [token_shards.open_split(folder, metadata, n, "validation")
                for n in held]
  docs = sum(counts[n]["train"]["documents"] for n in names)
  description = (f"prepared token shards {folder} ({docs:,} train documents"
                 f", {len(names)} source{'s' if len(names) > 1 else ''})")
  if shares is None:
    return Inputs(train[0], validation[0], TokenRecordIds(), tokenizer,
                  description)
  mean = {n: counts[n]["train"]["tokens"] / counts[n]["train"]["documents"]
          for n in names}
  rates = mixture_lib.document_rates([shares[n] for n in names],
                                     [mean[n] for n in names])
  # The validation pass reads the sources' documents mixed the same way.
  validation = mixture_lib.mixed(
      [grain.MapDataset.source(v) for v in validation],
      mixture_lib.document_rates([shares[n] for n in held],
                                 [mean[n] for n in held]))
  return Inputs(train, validation, TokenRecordIds(), tokenizer, description,
                names, rates)


def _prepared(data, vocab_size: int) -> Inputs | None:
  """The inputs `iiet prepare` made for a files source, None when it made
  none (a mixture needs them)."""
  folder = token_shards.location(data)
  metadata = token_shards.read_metadata(folder)
  if metadata is not None:
    return _prepared_inputs(data, vocab_size, folder, metadata)
  if token_shards.unfinished(folder):
    raise pipeline.PipelineError(
        f"{folder} holds an unfinished `iiet prepare` of this corpus; run "
        f"`iiet prepare` with this run's --config flags again to finish it "
        f"(files already tokenised are kept), or delete it.")
  if data.get("mixture"):
    raise pipeline.PipelineError(
        f"data.mixture is read from prepared token shards, and none are in "
        f"{folder}: run `iiet prepare` with this run's --config flags first.")
  return None


def open_inputs(data, vocab_size: int) -> Inputs:
  """Prepares (once) and opens the configured corpus; see module doc."""
  if data.source not in SOURCES:
    raise pipeline.PipelineError(
        f"data.source={data.source!r} is unknown; choose one of "
        f"{', '.join(SOURCES)}.")
  if data.source == "tokens":
    return _token_inputs(data, vocab_size)
  if data.get("mixture"):
    if data.source != "files":
      raise mixture_lib.MixtureError(
          f"data.mixture mixes files sources; set data.source='files' (it "
          f"is {data.source!r}).")
    mixture_lib.sources(data), mixture_lib.weights(data)   # checked first
  if data.source == "files" and (data.paths or data.get("mixture")):
    prepared = _prepared(data, vocab_size)
    if prepared is not None:
      return prepared
  if data.source == "tfds":
    builder = _tfds_builder(data)
    text_field = data.text_field
    splits = (data.train_split, data.validation_split)
  else:
    builder = corpus.prepare(_text_builder(data))
    text_field = "text"  # Our builders store the text under "text".
    splits = ("train", "validation")
  # Opened (and their shards checked) before a tokenizer is trained on them.
  train, validation = (corpus.open_split(builder, s) for s in splits)
  tokenizer = _tokenizer(data, builder, vocab_size, text_field)
  name = f"{builder.name}/{builder.builder_config.name}" \
      if builder.builder_config else builder.name
  return Inputs(train, validation,
                pipeline.Tokenize(tokenizer, text_field), tokenizer,
                f"{name} ({len(train):,} train / {len(validation):,} "
                f"validation documents) at {builder.data_dir}")
