"""A folder of safetensors files, read and written by the `safetensors` library.

A folder holds `model.safetensors`, or shards named in
`model.safetensors.index.json` ({"metadata": {"total_size": ...},
"weight_map": {tensor: file}}), the layout transformers' save_pretrained
writes and from_pretrained reads.

`Folder` checks every header when it opens (the library refuses a corrupt
header and a file shorter than its header says), then reads one tensor at a
time from the memory-mapped file. `save` writes one file, or shards of at
most `max_shard_size` bytes with their index.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from iiet_jax.export.names import ExportError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
MAX_SHARD_SIZE = 2 * 2 ** 30  # bytes per shard of an export
# The float dtypes a checkpoint may hold. safetensors 0.8.0's numpy framework
# reads BF16 as ml_dtypes.bfloat16 (and writes it), so no framework
# conversion is needed.
FLOAT_DTYPES = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
                "BF16": np.dtype(ml_dtypes.bfloat16)}
_UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9,
          "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30}
_REFETCH = "download or copy it again, or re-save the checkpoint"


class TensorFileError(ExportError):
  """A checkpoint folder whose safetensors files cannot be imported."""


def _header(path: Path, listed: list[str]):
  """The keys, shapes and dtypes of one file (its data stays on disk);
  `listed` are the tensors the index puts in it."""
  try:
    with safetensors.safe_open(path, framework="numpy") as f:
      return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype())
              for k in f.keys()}
  except (safetensors.SafetensorError, OSError) as err:
    held = (f" (it should hold {listed[0]} and {len(listed) - 1} more)"
            if listed else "")
    raise TensorFileError(
        f"{path} is not a readable safetensors file{held}: {err}. It may be "
        f"truncated or corrupt: {_REFETCH}.") from err


class Folder:
  """The tensors of a checkpoint folder, checked when opened, read lazily.

  `shapes` maps every tensor name to its shape; `get(name)` reads that one
  tensor (a NumPy array in the file's dtype); `where(name)` is its file.
  """

  def __init__(self, folder):
    self.folder = Path(folder)
    index, single = self.folder / INDEX, self.folder / SINGLE
    if index.is_file() and single.is_file():
      raise TensorFileError(f"{self.folder} holds both {SINGLE} and {INDEX}; "
                            f"remove the one that is stale.")
    if index.is_file():
      self.files = self._read_index(index)
    elif single.is_file():
      self.files = None
    else:
      raise TensorFileError(f"{self.folder} has neither {SINGLE} nor {INDEX}; "
                            f"give a folder written by `iiet export` or "
                            f"save_pretrained.")
    self.shapes: dict[str, tuple[int, ...]] = {}
    self._file_of: dict[str, Path] = {}
    by_file: dict[str, list[str]] = {}
    for name, file in (self.files or {}).items():
      by_file.setdefault(file, []).append(name)
    first = None  # (tensor, file, dtype) that fixes the folder's dtype
    for file in sorted(by_file) if self.files is not None else [SINGLE]:
      path = self.folder / file
      if not path.is_file():
        raise TensorFileError(
            f"{index} names shard {file} (holding {by_file[file][0]}, ...), "
            f"which is not in {self.folder}: {_REFETCH}.")
      header = _header(path, by_file.get(file, []))
      for name in by_file.get(file, []):
        if name not in header:
          raise TensorFileError(f"{index} puts {name} in {file}, but {path} "
                                f"does not hold it: {_REFETCH}.")
      for name, (shape, dtype) in header.items():
        if self.files is not None and self.files.get(name) != file:
          listed = (f"puts in {self.files[name]}" if name in self.files
                    else "does not list")
          raise TensorFileError(f"{path} holds {name}, which {index} "
                                f"{listed}: {_REFETCH}.")
        if dtype not in FLOAT_DTYPES:
          raise TensorFileError(f"{path}: {name} has dtype {dtype}; import "
                                f"reads {', '.join(FLOAT_DTYPES)} weights.")
        first = first or (name, path.name, dtype)
        if dtype != first[2]:
          raise TensorFileError(
              f"{path}: {name} is {dtype} but {first[0]} in {first[1]} is "
              f"{first[2]}; the folder mixes dtypes. Re-save it in one dtype "
              f"(e.g. model.to(torch.bfloat16).save_pretrained(DIR)).")
        self.shapes[name] = shape
        self._file_of[name] = path
    self.dtype = FLOAT_DTYPES[first[2]] if first else None

  @staticmethod
  def _read_index(index: Path) -> dict[str, str]:
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
      raise TensorFileError(f"{index} is not a safetensors index (JSON with "
                            f"a weight_map): {err}.") from err
    if not isinstance(weight_map, dict) or not all(
        isinstance(v, str) and "/" not in v for v in weight_map.values()):
      raise TensorFileError(f"{index}: weight_map must map tensor names to "
                            f"shard file names in the same folder.")
    return weight_map

  def where(self, name: str) -> str:
    return str(self._file_of[name])

  def get(self, name: str) -> np.ndarray:
    """The tensor, refused when it holds a NaN or an infinity (a model
    that cannot train or score; better said at import than at step 1)."""
    # A fresh memory map per tensor: its pages leave this process when the
    # handle closes, so resident memory never holds the whole folder.
    with safetensors.safe_open(self._file_of[name], framework="numpy") as f:
      tensor = f.get_tensor(name)
    floating = tensor.dtype in FLOAT_DTYPES.values()
    if floating and not np.isfinite(tensor).all():
      bad = int(np.size(tensor) - np.isfinite(tensor).sum())
      raise TensorFileError(
          f"{self._file_of[name]}: tensor {name} holds {bad} non-finite "
          f"values (NaN or infinity) of {tensor.size}; these weights cannot "
          f"be trained or scored. Export the model again from a checkpoint "
          f"saved before it diverged.")
    return tensor


def parse_size(value) -> int:
  """Bytes from an int or a string such as '2GiB', '500MB', '4096'."""
  if isinstance(value, int):
    size = value
  else:
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B|B)?\s*", str(value), re.I)
    if not match:
      raise ExportError(f"--max_shard_size={value!r}: give bytes, e.g. "
                        f"2GiB, 500MB or 1048576.")
    size = int(match[1]) * _UNITS[(match[2] or "").upper()]
  if size < 1:
    raise ExportError(f"--max_shard_size={value!r} must be at least 1 byte.")
  return size


def save(folder: Path, tensors: Mapping[str, np.ndarray], dtype,
         max_shard_size=MAX_SHARD_SIZE) -> list[str]:
  """Writes `tensors` as `dtype` into `folder`; returns the files written.

  Tensors fill shards in order, a new shard starting when the next tensor
  would pass `max_shard_size` (a tensor larger than that gets a shard of
  its own), as transformers does. huggingface_hub's splitter does the same,
  but it comes only with the optional torch extra.
  """
  limit, dtype = parse_size(max_shard_size), np.dtype(dtype)
  groups: list[list[str]] = [[]]
  used = total = 0
  for name, array in tensors.items():
    size = array.size * dtype.itemsize
    if groups[-1] and used + size > limit:
      groups.append([])
      used = 0
    groups[-1].append(name)
    used += size
    total += size
  if len(groups) == 1:
    files = [SINGLE]
  else:
    files = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
             for i in range(len(groups))]
  for file, group in zip(files, groups):
    # One shard converted at a time: at most one shard's copy in memory.
    safetensors.numpy.save_file(
        {k: np.ascontiguousarray(tensors[k], dtype) for k in group},
        folder / file, metadata={"format": "pt"})
  if len(files) > 1:
    index = {"metadata": {"total_size": total, "total_parameters": sum(
        a.size for a in tensors.values())},
             "weight_map": {k: f for f, g in zip(files, groups) for k in g}}
    (folder / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True)
                                + "\n")
    files.append(INDEX)
  return files
