"""The safetensors file format, read and written with NumPy alone.

Layout: an 8-byte little-endian header size, a JSON header mapping each name
to {dtype, shape, data_offsets} (plus "__metadata__"), then the raw
little-endian tensor bytes. bfloat16 comes from ml_dtypes (a JAX dependency).
"""

from __future__ import annotations

import json
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
          "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"),
          "I32": np.dtype("<i4")}
NAMES = {v: k for k, v in DTYPES.items()}


class TensorFileError(ValueError):
  """A file that is not a readable safetensors file."""


def write(path, tensors: Mapping[str, np.ndarray],
          metadata: Mapping[str, str] | None = None) -> None:
  header, offset, blobs = {}, 0, []
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    if array.dtype not in NAMES:
      raise TensorFileError(f"{name}: dtype {array.dtype} has no safetensors "
                            f"name here ({', '.join(NAMES.values())}).")
    blob = array.tobytes()
    header[name] = {"dtype": NAMES[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(blob)]}
    offset += len(blob)
    blobs.append(blob)
  header["__metadata__"] = dict(metadata or {"format": "pt"})
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)  # tensor data starts 8-byte aligned
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for blob in blobs:
      f.write(blob)


def read(path) -> dict[str, np.ndarray]:
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < 8:
    raise TensorFileError(f"{path} is too short to be a safetensors file.")
  (size,) = struct.unpack("<Q", data[:8])
  try:
    header = json.loads(data[8:8 + size])
  except ValueError as err:
    raise TensorFileError(f"{path}: unreadable safetensors header ({err}).")
  base, out = 8 + size, {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in DTYPES:
      raise TensorFileError(f"{path}: {name} has dtype {info['dtype']}, not "
                            f"one of {', '.join(DTYPES)}.")
    start, end = info["data_offsets"]
    out[name] = np.frombuffer(data[base + start:base + end],
                              DTYPES[info["dtype"]]).reshape(info["shape"])
  return out
