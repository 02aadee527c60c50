"""TFDS builders that turn local text into ArrayRecord `train`/`validation`.

  builder = text_corpus_builder(["/data/web/*.jsonl"], data_dir="/data/tfds",
                                text_field="content")
  prepare(builder)                      # no-op once prepared
  train = open_split(builder, "train")  # train[i]: {"text": b"..", "id": b".."}
  tokenizer = corpus_tokenizer(builder, vocab_size=32000)  # cached beside it

`python_stdlib_builder()` is the default corpus: the running interpreter's
own standard library, so a first run needs no network. Records are written
as ArrayRecord, read back by random access and never through TensorFlow,
which is why Grain can index them directly.

A config's name is a hash of its options, not of the files' contents:
after editing a corpus in place, delete its prepared directory or pass a
new `name`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging as pylogging
import os
import platform
import sysconfig
from typing import Iterator, Sequence

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from iiet_jax.data import documents as docs_lib
from iiet_jax.data import shards as shards_lib
from iiet_jax.data import tokenizer as tokenizer_lib
from iiet_jax.errors import LOGGER

DEFAULT_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst",
                    ".parquet")
# Metadata lists at most this many file names; the count is always exact.
_MAX_LISTED_FILES = 100


@dataclasses.dataclass(eq=False)
class TextCorpusConfig(tfds.core.BuilderConfig):
  """Which files form the corpus and how they split; see `find_files`."""
  paths: tuple[str, ...] = ()
  text_field: str = "text"
  validation_fraction: float = 0.01
  suffixes: tuple[str, ...] = DEFAULT_SUFFIXES
  exclude_dirs: tuple[str, ...] = ()
  max_files: int | None = None

  def __reduce_ex__(self, protocol):
    # TFDS accepts a registered config only as the very registered object;
    # unpickled in a data-loading worker, the stdlib default must resolve to
    # that worker's registered object again, not to a copy.
    rebuild = getattr(self, "_rebuild", None)
    return rebuild if rebuild else super().__reduce_ex__(protocol)

  def __post_init__(self):
    if not 0.0 < self.validation_fraction < 1.0:
      raise docs_lib.CorpusError(
          f"validation_fraction={self.validation_fraction} must lie strictly "
          "between 0 and 1, so both splits can hold documents.")


def text_corpus_config(paths: str | Sequence[str], *, name: str | None = None,
                       **options) -> TextCorpusConfig:
  """A config whose default name ("<first path stem>-<hash>") is unique to
  its options, so two corpora never share a prepared directory."""
  paths = (paths,) if isinstance(paths, (str, os.PathLike)) else paths
  # Absolute, so the same relative path from two working directories can
  # never share a name (and a prepared directory).
  paths = tuple(p if "://" in p else os.path.abspath(p)
                for p in map(os.fspath, paths))
  if name is None:
    name = docs_lib.folder_name(paths[0] if paths else "corpus",
                                {"paths": paths, **options})
  return TextCorpusConfig(name=name, paths=paths, **options)


class TextCorpus(tfds.core.GeneratorBasedBuilder):
  """Documents of `.txt`, `.jsonl` (also `.gz` / `.zst`) and `.parquet`
  files."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Hash-based train/validation split."}

  def __init__(self, *, file_format: str = "array_record", **kwargs):
    # TFDS would default to TFRecord, which needs TensorFlow to write.
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(self.builder_config.description
                     if self.builder_config else None),
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "id": tfds.features.Text(),  # File (and line or row) it came from.
        }),
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    config = self.builder_config
    if not isinstance(config, TextCorpusConfig):
      raise docs_lib.CorpusError(
          f"{self.name} needs a TextCorpusConfig naming the files, got "
          f"{config!r}; build it with text_corpus_builder(paths, ...).")
    files = docs_lib.find_files(config.paths, config.suffixes,
                                config.exclude_dirs, config.max_files)
    root = docs_lib.corpus_root(files)
    stats = docs_lib.ReadStats()
    return {split: self._generate_examples(files, root, split, stats)
            for split in docs_lib.SPLITS}

  def _generate_examples(self, files: Sequence[epath.Path], root: str,
                         split: str, stats: docs_lib.ReadStats):
    # Each split re-reads the whole corpus rather than holding it in memory;
    # only the train pass keeps the tallies, so nothing is counted twice.
    config = self.builder_config
    tally = stats if split == "train" else None
    yielded = 0
    for doc in docs_lib.read_documents(files, root, config.text_field, tally):
      doc_split = docs_lib.split_of(doc.text, config.validation_fraction)
      if tally is not None:
        tally.documents[doc_split] += 1
      if doc_split == split:
        yielded += 1
        yield doc.key, {"text": doc.text, "id": doc.key}
    if tally is not None:
      self._record(tally, root)
    if not yielded:
      raise self._empty_split_error(split, files, tally)

  def _record(self, stats: docs_lib.ReadStats, root: str) -> None:
    """Logs what the build read and keeps it in the dataset's metadata."""
    bad = stats.non_utf8_files
    if bad:
      logging.warning(
          "%s: %d of %d files are not UTF-8; decoded with replacement "
          "characters: %s", self.builder_config.name, len(bad), stats.files,
          ", ".join(bad[:_MAX_LISTED_FILES]))
    logging.info("%s: %d files, %s documents, %d empty documents skipped",
                 self.builder_config.name, stats.files, stats.documents,
                 stats.empty_documents)
    self.info.metadata.update({
        "root": root,
        "files": stats.files,
        "documents": dict(stats.documents),
        "empty_documents": stats.empty_documents,
        "non_utf8_file_count": len(bad),
        "non_utf8_files": bad[:_MAX_LISTED_FILES],
        "python_version": platform.python_version(),
    })

  def _empty_split_error(self, split: str, files: Sequence[epath.Path],
                         stats: docs_lib.ReadStats | None) -> Exception:
    config = self.builder_config
    if stats is not None and not sum(stats.documents.values()):
      return docs_lib.CorpusError(
          f"The corpus {list(config.paths)} is empty: its {stats.files} "
          f"files hold no non-empty documents ({stats.empty_documents} "
          f"empty ones; text_field={config.text_field!r}).")
    return docs_lib.CorpusError(
        f"No document of the {len(files)} files of {list(config.paths)} "
        f"hashed into the {split!r} split at validation_fraction="
        f"{config.validation_fraction}. Add documents or change the fraction.")


def stdlib_config(max_files: int | None = None,
                  validation_fraction: float = 0.01) -> TextCorpusConfig:
  """The standard library's `.py` files, named after the Python version.

  `max_files` keeps the first files in path order, for quick tests. Equal
  arguments, however passed, give the very config object TFDS registered.
  """
  return _stdlib_config(max_files, float(validation_fraction))


@functools.cache
def _stdlib_config(max_files: int | None,
                   validation_fraction: float) -> TextCorpusConfig:
  name = f"py{platform.python_version()}"
  if max_files is not None or validation_fraction != 0.01:
    name += f"-first{max_files}-val{validation_fraction}"
  config = TextCorpusConfig(
      name=name,
      description=(f"Standard library source of Python "
                   f"{platform.python_version()}, one document per file."),
      paths=(sysconfig.get_paths()["stdlib"],),
      suffixes=(".py",),
      # The stdlib directory also holds this interpreter's installed
      # packages, which differ between machines.
      exclude_dirs=("site-packages", "dist-packages", "__pycache__"),
      validation_fraction=validation_fraction,
      max_files=max_files)
  config._rebuild = (stdlib_config, (max_files, validation_fraction))
  return config


class PythonStdlib(TextCorpus):
  """The running interpreter's standard library: a corpus needing no network."""

  BUILDER_CONFIGS = [stdlib_config()]


def text_corpus_builder(paths: str | Sequence[str], data_dir: epath.PathLike,
                        **options) -> TextCorpus:
  """A builder for local files; options as in `TextCorpusConfig`."""
  return TextCorpus(config=text_corpus_config(paths, **options),
                    data_dir=os.fspath(data_dir))


def python_stdlib_builder(data_dir: epath.PathLike, **options) -> PythonStdlib:
  """A builder for the stdlib corpus; options as in `stdlib_config`."""
  return PythonStdlib(config=stdlib_config(**options),
                      data_dir=os.fspath(data_dir))


class _LogLines(io.TextIOBase):
  """A stream whose lines go to the library log (TFDS prints its
  "Downloading and preparing" lines to stdout)."""

  def write(self, text: str) -> int:
    if text.strip():
      logging.info("tfds: %s", text.strip())
    return len(text)


def prepare(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """Writes the splits unless already prepared; never reaches the network."""
  if not builder.is_prepared():
    pylogging.getLogger(LOGGER).info(
        "preparing the corpus in %s (once; later runs reuse it)",
        builder.data_dir)
  with contextlib.redirect_stdout(_LogLines()):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def open_split(dataset: tfds.core.DatasetBuilder | str, split: str,
               data_dir: epath.PathLike | None = None):
  """Random-access records of a prepared split.

  `dataset` is a builder or a name such as "python_stdlib" or
  "text_corpus/<config name>" under `data_dir`; a name that is not prepared
  there is an error rather than a build. Every shard of the split is
  checked first (`shards.py`): a damaged one is an error naming its file.
  """
  if isinstance(dataset, str):
    source = tfds.data_source(dataset, split=split, data_dir=data_dir,
                              download=False)
  else:
    source = dataset.as_data_source(split=split)
  return shards_lib.checked(source, shards_lib.tfds_shards(source),
                            _remedy(source.dataset_info))


def _remedy(info: tfds.core.DatasetInfo) -> str:
  """How to replace a damaged shard of a prepared dataset."""
  if info.name in (TextCorpus.name, PythonStdlib.name):
    return (f"Delete {info.data_dir} and run again: the corpus is prepared "
            f"afresh from its files (and its tokenizer, kept there, trained "
            f"again).")
  return (f"Prepare the TFDS dataset {info.full_name} again (delete "
          f"{info.data_dir} first), or restore the file from a copy.")


def split_texts(source, text_field: str = "text") -> Iterator[str]:
  """The documents of a data source as `str`, in stored (shuffled) order."""
  for i in range(len(source)):
    text = source[i][text_field]
    yield text.decode("utf-8") if isinstance(text, bytes) else text


def tokenizer_path(builder: tfds.core.DatasetBuilder,
                   vocab_size: int) -> epath.Path:
  """Where the trained tokenizer of a prepared dataset is cached."""
  return epath.Path(builder.data_dir) / f"spm_bpe_{vocab_size}.model"


def corpus_tokenizer(builder: tfds.core.DatasetBuilder, vocab_size: int,
                     text_field: str = "text",
                     **train_kwargs) -> tokenizer_lib.Tokenizer:
  """The tokenizer stored beside a prepared dataset, trained on first use.

  Trains on the start of the train split, whose records TFDS has already
  shuffled, so the sample spans the whole corpus.
  """
  texts = split_texts(open_split(builder, "train"), text_field)
  return tokenizer_lib.load_or_train(tokenizer_path(builder, vocab_size),
                                     vocab_size, texts, **train_kwargs)
