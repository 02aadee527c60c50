"""ArrayRecord shards checked when a split is opened, and read errors that
name their file.

  source = checked(source, [Shard(path, take, expected)], remedy)

At open each shard's footer and index are read (a few KiB, whatever the
shard's size): a truncated file, a damaged footer or a record count other
than the one the dataset's metadata promises is an error naming the file.
A damaged chunk inside a shard shows only when it is read (checking every
chunk at open would read the whole corpus); that read's error names the
file too.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from typing import Any, Sequence

from iiet_jax.data.documents import CorpusError


class ShardError(CorpusError):
  """A prepared ArrayRecord shard that is truncated or corrupted."""


@dataclasses.dataclass(frozen=True)
class Shard:
  path: str
  take: int | None = None       # records of the split read from this file
  expected: int | None = None   # records the file holds, by the metadata


def _count(path: str) -> int:
  """The records in `path` by its footer; RuntimeError when unreadable."""
  from array_record.python import array_record_module  # TFDS depends on it.
  reader = array_record_module.ArrayRecordReader(path)
  try:
    if not reader.ok():
      reader.close()  # raises the reader's own account of the damage
      raise RuntimeError("the reader could not open it")
    return reader.num_records()
  finally:
    if reader.is_open():
      reader.close()


def check(shard: Shard, remedy: str) -> Shard:
  if "://" in shard.path:  # remote files: checked as they are read
    return shard
  try:
    count = _count(shard.path)
  except RuntimeError as err:
    raise ShardError(f"{shard.path} is truncated or corrupted ({err}). "
                     f"{remedy}") from err
  if shard.expected is not None and count != shard.expected:
    raise ShardError(f"{shard.path} holds {count} records; its dataset's "
                     f"metadata says {shard.expected} (a truncated or "
                     f"replaced file). {remedy}")
  return dataclasses.replace(shard, take=count if shard.take is None
                             else shard.take)


class CheckedSource:
  """A random-access source whose read errors name the damaged shard."""

  def __init__(self, source, shards: Sequence[Shard], remedy: str):
    self.source, self.shards, self.remedy = source, list(shards), remedy
    takes = [s.take for s in self.shards]
    self._ends = (list(itertools.accumulate(takes))
                  if None not in takes else None)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index) -> Any:
    try:
      return self.source[index]
    except RuntimeError as err:  # ArrayRecord's reader reports damage so
      raise ShardError(f"{self._file_of(index)} cannot be read at record "
                       f"{index} of its split ({err}). {self.remedy}"
                       ) from err

  def _file_of(self, index) -> str:
    if self._ends is not None:
      at = bisect.bisect_right(self._ends, int(index))
      if at < len(self.shards):
        return self.shards[at].path
    return "One of " + ", ".join(s.path for s in self.shards)

  def __repr__(self) -> str:
    return f"CheckedSource({self.source!r})"


def checked(source, shards: Sequence[Shard], remedy: str) -> CheckedSource:
  """`source` after checking every shard's footer; see the module doc.
  `source` must not have read its files yet (TFDS's sources open lazily)."""
  return CheckedSource(source, [check(s, remedy) for s in shards], remedy)


def open_files(paths: Sequence[str], remedy: str) -> CheckedSource:
  """ArrayRecord files as one source, checked before Grain opens them (its
  source reads every footer at once, with errors that name no file)."""
  import grain
  files = [check(Shard(p), remedy) for p in paths]
  return CheckedSource(grain.sources.ArrayRecordDataSource(list(paths)),
                       files, remedy)


def tfds_shards(source) -> list[Shard]:
  """The shards a TFDS ArrayRecord data source reads, in its order."""
  split = source.dataset_info.splits[source.split]
  return [Shard(f.filename,
                f.take if f.take >= 0 else f.examples_in_shard - f.skip,
                f.examples_in_shard) for f in split.file_instructions]
