"""Influence on screen and on disk: a table, influence.json, a heatmap PNG
(matplotlib, the `plot` extra)."""

from __future__ import annotations

import json

from etils import epath
import numpy as np

from iiet_jax import plots


def table(values_LR: np.ndarray, title: str) -> str:
  L, R = values_LR.shape
  lines = [title, "layer " + "".join(f"{'k=' + str(k + 1):>10s}"
                                      for k in range(R))]
  for t in range(L):
    cells = "".join(f"{'-':>10s}" if np.isnan(v) else f"{v:10.4f}"
                    for v in values_LR[t])
    lines.append(f"{t + 1:5d} {cells}")
  return "\n".join(lines)


def heatmap(values_LR: np.ndarray) -> bytes:
  """PNG: layers down, iterations across, each cell's value written in it;
  white (0) to deep blue (the maximum), grey where an iteration does not
  run (NaN)."""
  plt = plots.pyplot()
  L, R = values_LR.shape
  finite = values_LR[np.isfinite(values_LR)]
  top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
  cmap = plt.get_cmap("Blues").with_extremes(bad="0.7")
  fig, ax = plt.subplots(figsize=(2.4 + 0.9 * R, 1.4 + 0.4 * L), dpi=100)
  image = ax.imshow(np.ma.masked_invalid(values_LR), cmap=cmap, vmin=0.0,
                    vmax=top, aspect="auto")
  for t in range(L):
    for k in range(R):
      v = values_LR[t, k]
      text, dark = ("-", False) if np.isnan(v) else (f"{v:.3g}", v > top / 2)
      ax.text(k, t, text, ha="center", va="center", fontsize=8,
              color="white" if dark else "black")
  ax.set_xticks(range(R), [str(k + 1) for k in range(R)])
  ax.set_yticks(range(L), [str(t + 1) for t in range(L)])
  ax.set_xlabel("iteration k")
  ax.set_ylabel("layer t")
  ax.set_title("iteration influence", fontsize=10)
  fig.colorbar(image, ax=ax, label="relative state change")
  fig.tight_layout()
  return plots.png_bytes(fig)


def write_json(workdir: epath.PathLike, influence_json: dict) -> epath.Path:
  out = epath.Path(workdir) / "influence.json"
  out.write_text(json.dumps(influence_json, indent=2))
  return out


def write_heatmap(workdir: epath.PathLike,
                  state_change_LR: np.ndarray) -> epath.Path:
  """influence.png; a plots.PlotError without matplotlib."""
  out = epath.Path(workdir) / "influence.png"
  out.write_bytes(heatmap(state_change_LR))
  return out
