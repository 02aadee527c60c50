"""Documents of a local text corpus: finding files, reading them, splitting.

A `.txt` (or any plain-text suffix, such as `.py`) file is one document; a
`.jsonl` line and a `.parquet` row are one document each, their text in a
configurable field. JSONL shards compressed the way corpora ship
(`.jsonl.gz`, `.jsonl.zst`: SlimPajama, RedPajama, Dolma) are read as a
stream, a line at a time, never a whole shard in memory. Bytes that are
not UTF-8 are decoded with replacement characters and the file is recorded
in `ReadStats`, never dropped silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import gzip
import hashlib
import json
import os
import re
import zlib
from typing import Iterator, Sequence

from etils import epath

from iiet_jax.errors import MissingInputError, UserError

SPLITS = ("train", "validation")
# Where prepared corpora (TFDS datasets, token shards) live by default.
DEFAULT_DATA_DIR = "~/.cache/iiet_jax/tfds"
_GLOB_CHARS = "*?["


class CorpusError(UserError, ValueError):
  """A corpus description that names no usable documents."""

  kind = "Data"


@dataclasses.dataclass(frozen=True)
class Document:
  key: str  # "<file relative to the corpus root>[:<line or row>]"
  text: str


@dataclasses.dataclass
class ReadStats:
  """What reading the corpus found, for the build log and dataset metadata."""
  files: int = 0
  documents: dict[str, int] = dataclasses.field(
      default_factory=lambda: dict.fromkeys(SPLITS, 0))
  empty_documents: int = 0
  non_utf8_files: list[str] = dataclasses.field(default_factory=list)


def _glob(pattern: str) -> list[epath.Path]:
  """Files matching `pattern`; `**` works on local paths only."""
  if "://" not in pattern:  # Local: the standard library handles `**`.
    return [epath.Path(p) for p in glob.glob(pattern, recursive=True)
            if os.path.isfile(p)]
  parts = pattern.split("/")
  first = next(i for i, p in enumerate(parts)
               if any(c in p for c in _GLOB_CHARS))
  base = epath.Path("/".join(parts[:first]))
  return [p for p in base.glob("/".join(parts[first:])) if p.is_file()]


def _walk(root: epath.Path, exclude_dirs: Sequence[str]) -> list[epath.Path]:
  files = []
  for parent, dirs, names in root.walk():
    # Pruned in place, so excluded trees are never even listed.
    dirs[:] = [d for d in dirs if d not in exclude_dirs]
    files.extend(epath.Path(parent) / n for n in names)
  return files


def find_files(paths: Sequence[str], suffixes: Sequence[str],
               exclude_dirs: Sequence[str] = (),
               max_files: int | None = None) -> list[epath.Path]:
  """The corpus files named by `paths`, sorted, so builds are reproducible.

  Each entry is a file, a directory (searched recursively, skipping
  directories named in `exclude_dirs`) or a glob; only files ending in one
  of `suffixes` are kept. `max_files` keeps the first files (for tests).
  """
  if isinstance(paths, str):
    paths = [paths]
  if not paths:
    raise CorpusError("No corpus paths given; pass files, directories or "
                      "globs.")
  suffixes = tuple(suffixes)
  found: set[str] = set()
  for entry in map(os.fspath, paths):
    if any(c in entry for c in _GLOB_CHARS):
      matches = _glob(entry)
      if not matches:
        raise CorpusError(f"The corpus glob {entry!r} matches no files.")
    else:
      path = epath.Path(entry)
      if not path.exists():
        raise MissingInputError(f"Corpus path {entry} does not exist; correct "
                               f"it (data.paths, or the paths of a "
                               f"data.mixture source).")
      if path.is_dir():
        matches = _walk(path, exclude_dirs)
      elif path.name.endswith(suffixes):
        matches = [path]
      else:
        raise CorpusError(f"Corpus file {entry} does not end in one of "
                          f"{suffixes}; rename it or add its suffix.")
    kept = [p for p in matches if p.name.endswith(suffixes)]
    if not kept:
      raise CorpusError(f"Corpus path {entry!r} holds no files ending in "
                        f"{suffixes}.")
    found.update(os.fspath(p) for p in kept)
  files = sorted(found)
  if max_files is not None:
    files = files[:max_files]
  return [epath.Path(f) for f in files]


def folder_name(first_path: str, fields: dict) -> str:
  """"<stem of first_path>-<hash of fields>": a prepared folder's name, the
  same for the same fields and never shared by two sets of them."""
  digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()
                          ).hexdigest()[:10]
  stem = first_path.rstrip("/").split("/")[-1]
  stem = re.sub(r"[^\w]+", "_", stem.split(".")[0]).strip("_") or "corpus"
  return f"{stem}-{digest}"


def corpus_root(files: Sequence[epath.Path]) -> str:
  """The deepest directory holding every file; keys are relative to it."""
  # Compared part by part, not with os.path, which would fold `gs://` to `gs:/`.
  common: list[str] = []
  for parts in zip(*(os.fspath(f.parent).split("/") for f in files)):
    if len(set(parts)) > 1:
      break
    common.append(parts[0])
  return "/".join(common)


def _decode(data: bytes, name: str, stats: ReadStats | None,
            flagged: set[str]) -> str:
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError:
    if stats is not None and name not in flagged:
      flagged.add(name)
      stats.non_utf8_files.append(name)
    return data.decode("utf-8", errors="replace")


def _text_field(record, field: str, where: str) -> str | None:
  if not isinstance(record, dict) or field not in record:
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise CorpusError(f"{where} has no text field {field!r} (it has {keys}); "
                      "set text_field to the field holding the text.")
  value = record[field]
  if value is not None and not isinstance(value, str):
    raise CorpusError(f"{where}: field {field!r} is a "
                      f"{type(value).__name__}, not a string.")
  return value


JSONL = (".jsonl", ".jsonl.gz", ".jsonl.zst")


class TruncatedStream(EOFError):
  """A compressed stream that ends inside a frame."""


def _zstd_chunks(f, size: int = 1 << 20) -> Iterator[bytes]:
  """The decompressed bytes of a zstd stream of one or more frames. Each
  frame must end: zstandard's stream reader would end a cut-short shard
  early without a word, and its documents would be lost silently."""
  import zstandard  # only zstd corpora need it
  decompressor = zstandard.ZstdDecompressor()
  frame, fed = decompressor.decompressobj(), False
  while chunk := f.read(size):
    while chunk:
      fed = True
      yield frame.decompress(chunk)
      chunk = b""
      if frame.eof:   # the rest of the chunk starts the next frame
        chunk, frame, fed = (frame.unused_data, decompressor.decompressobj(),
                             False)
  if fed and not frame.eof:
    raise TruncatedStream("the last zstd frame is cut short")


def _split_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
  rest = b""
  for chunk in chunks:
    *lines, rest = (rest + chunk).split(b"\n")
    for line in lines:
      yield line + b"\n"
  if rest:
    yield rest


@contextlib.contextmanager
def _lines(path: epath.Path):
  """The file's raw lines, decompressed as they are read (gzip: the
  standard library; zstd: the zstandard package, one or more frames, as
  `zstd` and streaming writers emit them)."""
  with path.open("rb") as f:
    if path.name.endswith(".gz"):
      yield gzip.GzipFile(fileobj=f, mode="rb")
    elif path.name.endswith(".zst"):
      yield _split_lines(_zstd_chunks(f))
    else:
      yield f


def _damaged_stream(err: Exception) -> bool:
  """Whether `err` is a decompressor's complaint about its input."""
  return (isinstance(err, (EOFError, zlib.error, gzip.BadGzipFile))
          or type(err).__name__ == "ZstdError")


def _read_jsonl(path: epath.Path, name: str, field: str,
                stats: ReadStats | None) -> Iterator[tuple[str, str | None]]:
  read = [0]   # lines read so far, for the message below
  try:
    yield from _jsonl_records(path, name, field, stats, read)
  except Exception as err:
    if isinstance(err, UserError) or not _damaged_stream(err):
      raise
    raise CorpusError(
        f"{path} cannot be decompressed after line {read[0]} ({err}); the "
        f"shard is damaged or cut short: fetch it again.") from None


def _jsonl_records(path: epath.Path, name: str, field: str,
                   stats: ReadStats | None, read: list[int]
                   ) -> Iterator[tuple[str, str | None]]:
  flagged: set[str] = set()
  with _lines(path) as f:
    for number, raw in enumerate(f, start=1):
      read[0] = number
      line = _decode(raw, name, stats, flagged)
      if not line.strip():
        continue
      where = f"{path} line {number}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise CorpusError(f"{where} is not valid JSON: {e}") from e
      text = _text_field(record, field, where)
      try:
        text and text.encode("utf-8")
      except UnicodeEncodeError:
        # A `\ud800`-style escape leaves a lone surrogate, which no UTF-8
        # writer accepts: treat it like any other invalid byte.
        raw = text.encode("utf-8", errors="surrogatepass")
        text = _decode(raw, name, stats, flagged)
      yield f"{name}:{number}", text


def _read_parquet(path: epath.Path, name: str, field: str,
                  stats: ReadStats | None) -> Iterator[tuple[str, str | None]]:
  import pyarrow.parquet as pq  # Only parquet corpora need it.

  flagged: set[str] = set()
  with path.open("rb") as f:
    parquet = pq.ParquetFile(f)
    columns = parquet.schema_arrow.names
    if field not in columns:
      raise CorpusError(f"{path} has no column {field!r} (it has {columns}); "
                        "set text_field to the column holding the text.")
    row = 0
    for batch in parquet.iter_batches(columns=[field]):
      for value in batch.column(0).to_pylist():
        if isinstance(value, bytes):  # A binary column: decode it like a file.
          value = _decode(value, name, stats, flagged)
        elif value is not None and not isinstance(value, str):
          raise CorpusError(f"{path} row {row}: column {field!r} holds "
                            f"{type(value).__name__}, not strings.")
        yield f"{name}:{row}", value
        row += 1


def read_documents(files: Sequence[epath.Path], root: str, text_field: str,
                   stats: ReadStats | None = None) -> Iterator[Document]:
  """Every non-empty document in `files`, in file order."""
  for path in files:
    name = os.fspath(path)[len(root):].lstrip("/")
    if path.name.endswith(JSONL):
      records = _read_jsonl(path, name, text_field, stats)
    elif path.name.endswith(".parquet"):
      records = _read_parquet(path, name, text_field, stats)
    else:
      records = iter([(name, _decode(path.read_bytes(), name, stats, set()))])
    if stats is not None:
      stats.files += 1
    for key, text in records:
      if not text or not text.strip():
        if stats is not None:
          stats.empty_documents += 1
        continue
      yield Document(key, text)


def split_of(text: str, validation_fraction: float) -> str:
  """"train" or "validation", from a hash of the text alone.

  Depends on nothing but the content, so the split is the same on every
  machine and run, and duplicated documents can never straddle the splits.
  """
  digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
  unit = int.from_bytes(digest, "little") / 2.0**64
  return "validation" if unit < validation_fraction else "train"
