"""Parameters read lazily from a checkpoint and placed shard by shard.

A leaf is a list of readers, each giving one HF tensor already in our layout
(names.from_hf builds them), plus whether the parts stack on a new leading
axis (the scanned layers). Only the parts and slices a shard needs are read,
so the host holds at most one leaf's shards at a time, never the model.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import jax
import numpy as np


class TensorSource(Protocol):
  """Tensors by HF name, read on demand (tensor_file.Folder is one)."""
  shapes: Mapping[str, tuple[int, ...]]

  def get(self, name: str) -> np.ndarray: ...

  def where(self, name: str) -> str: ...


class Arrays:
  """A {name: array} dict as a TensorSource."""

  def __init__(self, arrays: Mapping[str, Any]):
    self._arrays = arrays
    self.shapes = {k: tuple(np.shape(v)) for k, v in arrays.items()}

  def get(self, name: str) -> np.ndarray:
    return np.asarray(self._arrays[name])

  def where(self, name: str) -> str:
    del name
    return "the state dict"


def host(readers, stacked: bool, index: tuple, dtype) -> np.ndarray:
  """The shard `index` of a leaf as a C-ordered `dtype` array, reading one
  part at a time; parts outside the shard are not read."""
  if not stacked:
    return np.array(readers[0]()[index], dtype, order="C")
  out = None
  rows = range(*index[0].indices(len(readers)))
  for j, i in enumerate(rows):
    part = readers[i]()[index[1:]]
    if out is None:
      out = np.empty((len(rows),) + part.shape, dtype)
    out[j] = part   # converts into place: no stacked copy in between
  return out


def placed(readers, stacked: bool, target: jax.ShapeDtypeStruct) -> jax.Array:
  """The leaf assembled on the devices of `target.sharding` (any mesh, any
  number of processes: each reads only its addressable shards)."""
  shards: dict[tuple, np.ndarray] = {}

  def shard(index):
    # Devices holding the same shard (replicated axes) share one host copy.
    key = tuple((s.start, s.stop, s.step) for s in index)
    if key not in shards:
      shards[key] = host(readers, stacked, index, target.dtype)
    return shards[key]
  return jax.make_array_from_callback(target.shape, target.sharding, shard)
