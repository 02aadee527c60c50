"""Figures: matplotlib on demand, and `iiet plot`'s training curves.

  iiet plot --workdir=RUN [RUN ...] [--out=FILE.png]

matplotlib is the `plot` extra; it is imported only when a figure is drawn,
with the Agg backend (files, no display). The curves are read from each
run's metrics.jsonl (`train/writers.py`): train loss every `log_every` steps,
validation loss every `eval_every`; a step written twice (a run resumed from
an earlier checkpoint) keeps its last value.
"""

from __future__ import annotations

import io
import json
import math

from etils import epath

from iiet_jax.errors import UserError

INSTALL = "pip install -e '.[plot]'"


class PlotError(UserError, RuntimeError):
  """A figure that cannot be drawn: no matplotlib, or no data to draw."""

  kind = "plot"


def pyplot():
  """matplotlib.pyplot with the Agg backend, or a PlotError saying how to
  install it."""
  try:
    import matplotlib
  except ImportError:
    raise PlotError(f"drawing figures needs matplotlib, the `plot` extra: "
                    f"{INSTALL}") from None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def png_bytes(fig) -> bytes:
  """`fig` as PNG bytes (then closed), for epath (gs://) destinations."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  pyplot().close(fig)
  return buffer.getvalue()


def read_curves(workdir: epath.PathLike) -> dict:
  """{"train": (steps, losses), "validation": (steps, losses),
  "switches": [steps]} from `workdir`/metrics.jsonl."""
  workdir = epath.Path(workdir)
  if not workdir.is_dir():
    raise PlotError(f"{workdir}: no such run directory")
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    raise PlotError(f"{path}: no such file (not a training run's workdir?)")
  by_split: dict[str, dict[int, float]] = {"train": {}, "validation": {}}
  switches = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a line cut short by a crash
      continue
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
      continue
    if str(record.get("event", "")).startswith("switched to"):
      switches.append(record["step"])
    loss = record.get("loss")
    if (record.get("split") in by_split and isinstance(loss, (int, float))
        and math.isfinite(loss)):
      by_split[record["split"]][record["step"]] = float(loss)
  if not any(by_split.values()):
    raise PlotError(f"{path}: no train or validation rows with a numeric "
                    f"loss")
  curves = {split: (sorted(rows), [rows[s] for s in sorted(rows)])
            for split, rows in by_split.items()}
  return {**curves, "switches": sorted(set(switches))}


def _labels(workdirs: list[str]) -> list[str]:
  """Each run's folder name; the path as given where two names collide."""
  names = [epath.Path(w).name or str(w) for w in workdirs]
  return [n if names.count(n) == 1 else str(w)
          for n, w in zip(names, workdirs)]


def training_curves(workdirs: list[str], out: str | None = None
                    ) -> epath.Path:
  """Train and validation loss of `workdirs` against steps, one line per
  run, in one PNG (default: curves.png in the first run); returns its path."""
  if not workdirs:
    raise PlotError("no run to plot: give --workdir=RUN [RUN ...]")
  runs = [read_curves(w) for w in workdirs]  # every path checked first
  plt = pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
  for label, run in zip(_labels(workdirs), runs):
    for ax, split in zip(axes, ("train", "validation")):
      steps, losses = run[split]
      if steps:
        line, = ax.plot(steps, losses, "-" if split == "train" else "o-",
                        lw=1.4, ms=3, label=label)
        for s in run["switches"]:
          ax.axvline(s, color=line.get_color(), ls=":", lw=1)
  for ax, title in zip(axes, ("train loss", "validation loss")):
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  if any(run["switches"] for run in runs):
    fig.text(0.01, 0.01, "dotted: a two-stage run's switch from "
             "Transformer++",
             fontsize=8, color="0.4")
  fig.tight_layout()
  path = epath.Path(out) if out else epath.Path(workdirs[0]) / "curves.png"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(png_bytes(fig))
  return path
