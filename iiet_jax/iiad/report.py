"""Influence on screen and on disk: a table, influence.json, a heatmap PNG."""

from __future__ import annotations

import json
import struct
import zlib

from etils import epath
import numpy as np

_CELL = 28  # pixels per (layer, iteration) cell


def table(values_LR: np.ndarray, title: str) -> str:
  L, R = values_LR.shape
  lines = [title, "layer " + "".join(f"{'k=' + str(k + 1):>10s}"
                                      for k in range(R))]
  for t in range(L):
    cells = "".join(f"{'-':>10s}" if np.isnan(v) else f"{v:10.4f}"
                    for v in values_LR[t])
    lines.append(f"{t + 1:5d} {cells}")
  return "\n".join(lines)


def _png(rgb_HW3: np.ndarray) -> bytes:
  def chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return (struct.pack(">I", len(data)) + body
            + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF))
  h, w, _ = rgb_HW3.shape
  rows = b"".join(b"\x00" + rgb_HW3[y].astype(np.uint8).tobytes()
                  for y in range(h))
  return (b"\x89PNG\r\n\x1a\n"
          + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def heatmap(values_LR: np.ndarray) -> bytes:
  """Layers down, iterations across; white (0) to deep blue (the maximum),
  grey where an iteration does not run."""
  L, R = values_LR.shape
  top = np.nanmax(values_LR) if np.any(~np.isnan(values_LR)) else 1.0
  img = np.zeros((L * _CELL, R * _CELL, 3))
  for t in range(L):
    for k in range(R):
      v = values_LR[t, k]
      if np.isnan(v):
        color = (160, 160, 160)
      else:
        x = float(v / top) if top > 0 else 0.0
        color = (255 * (1 - x), 255 * (1 - 0.75 * x), 255 - 100 * x)
      img[t * _CELL:(t + 1) * _CELL, k * _CELL:(k + 1) * _CELL] = color
  img[::_CELL, :] = img[:, ::_CELL] = 255  # grid lines
  return _png(img)


def write(workdir: epath.PathLike, influence_json: dict,
          state_change_LR: np.ndarray) -> tuple[epath.Path, epath.Path]:
  workdir = epath.Path(workdir)
  out_json, out_png = workdir / "influence.json", workdir / "influence.png"
  out_json.write_text(json.dumps(influence_json, indent=2))
  out_png.write_bytes(heatmap(state_change_LR))
  return out_json, out_png
