"""docs/plateau.md and its figures, from bench/plateau.py's results.json and
bench/plateau_analysis.py's mechanism.json alone:

  python bench/plateau_report.py [--data=docs/plateau] [--out=docs/plateau.md]

The findings in prose are written by hand in docs/plateau_notes.md and
placed after the tables; every number in the tables and figures is computed
here from the two JSON files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import stats  # noqa: E402

# A run plateaus when it ends this far above Transformer++ on its batches.
PLATEAU_NATS = 0.3
NOTES = ROOT / "docs" / "plateau_notes.md"
LABELS = {"transformer": "Transformer++", "iiet": "IIET (SPEC init)",
          "iiet_inherit": "IIET, history_init=inherit",
          "iiet_warmup": "IIET, 100 warm-up steps",
          "iiet_history_lr": "IIET, history LR x 0.1",
          "scale_iiet": "IIET (SPEC init), 8 layers d=256",
          "scale_iiet_inherit": "IIET, inherit start, 8 layers d=256"}
GROUPS = ("blocks", "embedding", "history", "norms")


def _by(runs, variant, data_seed, seed=None):
  for row in runs.values():
    if (row["variant"] == variant and row["data_seed"] == data_seed
        and (seed is None or row["seed"] == seed)):
      return row
  return None


def remedy_rows(results, orders, prefix="") -> list[dict]:
  """Per variant on the search orders: paired difference to Transformer++
  and plateau count, over the orders where both ran. `prefix` "scale_":
  the larger size's runs instead."""
  runs = results["runs"]
  rows = []
  variants = dict.fromkeys(
      r["variant"] for r in runs.values() if r["data_seed"] in orders
      and r["variant"].startswith(prefix)
      and (prefix or not r["variant"].startswith("scale_")))
  for variant in variants:
    if variant == prefix + "transformer":
      continue
    diffs = {}
    for d in orders:
      mine = _by(runs, variant, d, d)
      base = _by(runs, prefix + "transformer", d, d)
      if mine and base:
        diffs[d] = mine["validation_loss"] - base["validation_loss"]
    if not diffs:
      continue
    ci = stats.interval(list(diffs.values()))
    plateaus = sum(v > PLATEAU_NATS for v in diffs.values())
    works = (len(diffs) >= 8 and plateaus == 0 and ci["mean"] < 0)
    rows.append({"variant": variant, "diffs": diffs, "ci": ci,
                 "plateaus": plateaus, "works": works})
  return rows


def _fmt_ci(ci) -> str:
  if ci["lo"] is None:
    return f"{ci['mean']:+.3f}"
  return f"{ci['mean']:+.3f} [{ci['lo']:+.3f}, {ci['hi']:+.3f}]"


def remedy_table(rows) -> list[str]:
  out = ["| start | orders | plateaus (> +0.3 nat) | mean paired Δ vs "
         "Transformer++ [95% CI] | Δ per order | works |",
         "|---|---|---|---|---|---|"]
  for r in rows:
    per = ", ".join(f"{v:+.2f}" for _, v in sorted(r["diffs"].items()))
    out.append(f"| {LABELS.get(r['variant'], r['variant'])} | "
               f"{len(r['diffs'])} | {r['plateaus']} | {_fmt_ci(r['ci'])} | "
               f"{per} | {'yes' if r['works'] else 'no'} |")
  return out


def mechanism_table(results, orders) -> list[str]:
  runs = results["runs"]
  out = ["| data order | Transformer++ | " + " | ".join(
      f"IIET init {i}" for i in orders) + " |",
         "|---|---|" + "---|" * len(orders)]
  for d in orders:
    base = _by(runs, "transformer", d, d)
    cells = []
    for i in orders:
      row = _by(runs, "iiet", d, i)
      if row is None or base is None:
        cells.append("-")
        continue
      diff = row["validation_loss"] - base["validation_loss"]
      mark = " **plateau**" if diff > PLATEAU_NATS else ""
      cells.append(f"{row['validation_loss']:.3f} ({diff:+.2f}){mark}")
    out.append(f"| {d} | {base['validation_loss']:.3f} | " if base else
               f"| {d} | - | ")
    out[-1] += " | ".join(cells) + " |"
  return out


def scale_table(results, orders) -> list[str]:
  """Per data order: Transformer++'s validation loss and each IIET start's
  difference to it, at tiny and at the next size, side by side."""
  runs = results["runs"]
  starts = (("iiet", "IIET (SPEC init)"), ("iiet_inherit", "IIET, inherit"))
  out = ["| data order | Transformer++ tiny | Transformer++ 8L d=256 | " +
         " | ".join(f"{label} Δ tiny | {label} Δ 8L d=256"
                    for _, label in starts) + " |",
         "|---|---|---|" + "---|---|" * len(starts)]

  def cell(variant, base, d):
    row = _by(runs, variant, d, d)
    if row is None or base is None:
      return "-"
    diff = row["validation_loss"] - base["validation_loss"]
    return f"{diff:+.2f}" + (" **plateau**" if diff > PLATEAU_NATS else "")

  for d in orders:
    tiny = _by(runs, "transformer", d, d)
    big = _by(runs, "scale_transformer", d, d)
    if big is None:
      continue
    cells = [f"{tiny['validation_loss']:.3f}" if tiny else "-",
             f"{big['validation_loss']:.3f}"]
    for variant, _ in starts:
      cells += [cell(variant, tiny, d), cell("scale_" + variant, big, d)]
    out.append(f"| {d} | " + " | ".join(cells) + " |")
  return out


def documents_table(results, mechanism, orders) -> list[str]:
  runs = results["runs"]
  out = ["| data order | documents in the first 100 steps | tokens | "
         "zlib ratio (token-weighted) | share of tokens in documents with "
         "ratio < 0.1 | most repetitive | outcome |", "|---|---|---|---|---|"
         "---|---|"]
  for d in orders:
    early = mechanism["early_documents"].get(str(d))
    if early is None:
      continue
    docs = early["documents"]
    low = sum(x["tokens"] for x in docs if x["zlib_ratio"] < 0.1)
    worst = min(docs, key=lambda x: x["zlib_ratio"])
    outcome = _outcome(runs, d)
    out.append(f"| {d} | {len(docs)} | {early['tokens']:,} | "
               f"{early['zlib_ratio_weighted']:.3f} | "
               f"{low / early['tokens']:.0%} | {worst['id']} "
               f"({worst['zlib_ratio']:.3f}, {worst['tokens']:,} tokens) | "
               f"{outcome} |")
  return out


def _outcome(runs, d) -> str:
  base = _by(runs, "transformer", d, d)
  iiet = [r for r in runs.values() if r["variant"] == "iiet"
          and r["data_seed"] == d]
  if base is None or not iiet:
    return "-"
  n = sum(r["validation_loss"] - base["validation_loss"] > PLATEAU_NATS
          for r in iiet)
  return f"IIET plateaus in {n} of {len(iiet)}"


def _smooth(values, window=25):
  values = np.asarray(values, float)
  if len(values) < window:
    return values
  kernel = np.ones(window) / window
  return np.convolve(values, kernel, mode="valid")


def figures(results, mechanism, orders, search, out: Path) -> dict:
  from iiet_jax import plots
  plt = plots.pyplot()
  out.mkdir(parents=True, exist_ok=True)
  runs = results["runs"]
  made = {}

  # 1. Training loss of every mechanism run, one panel per data order.
  fig, axes = plt.subplots(1, len(orders), figsize=(5 * len(orders), 3.8),
                           sharey=True)
  for ax, d in zip(np.atleast_1d(axes), orders):
    base = _by(runs, "transformer", d, d)
    if base:
      y = _smooth(base["train"]["loss"])
      ax.plot(np.arange(len(y)) + 13, y, color="black", lw=1.4,
              label="Transformer++")
    for i, color in zip(orders, ("tab:blue", "tab:orange", "tab:green")):
      row = _by(runs, "iiet", d, i)
      if row:
        y = _smooth(row["train"]["loss"])
        ax.plot(np.arange(len(y)) + 13, y, color=color, lw=1.2,
                label=f"IIET init {i}")
    ax.set_title(f"data order {d}")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.set_ylim(3.5, 8)
    ax.legend(fontsize=8)
  np.atleast_1d(axes)[0].set_ylabel("training loss (25-step mean)")
  fig.tight_layout()
  made["loss"] = _save(fig, out / "mechanism_loss.png")

  # 2. Gradient norm per parameter group, plateau runs against the others.
  fig, axes = plt.subplots(1, len(GROUPS), figsize=(4.2 * len(GROUPS), 3.5))
  for ax, group in zip(axes, GROUPS):
    for d in orders:
      base = _by(runs, "transformer", d, d)
      for i in orders:
        row = _by(runs, "iiet", d, i)
        key = f"grad_norm/{group}"
        if not row or not base or key not in row["train"]:
          continue
        flat = row["validation_loss"] - base["validation_loss"] > PLATEAU_NATS
        y = _smooth(row["train"][key])
        ax.plot(np.arange(len(y)) + 13, y, lw=1,
                color="tab:red" if flat else "tab:blue", alpha=0.7)
    for d in orders:
      base = _by(runs, "transformer", d, d)
      key = f"grad_norm/{group}"
      if base and key in base["train"]:
        y = _smooth(base["train"][key])
        ax.plot(np.arange(len(y)) + 13, y, lw=1, color="black", alpha=0.6)
    ax.set_yscale("log")
    ax.set_title(f"gradient norm: {group}")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0].plot([], [], color="tab:red", label="plateaus")
  axes[0].plot([], [], color="tab:blue", label="trains")
  axes[0].plot([], [], color="black", label="Transformer++")
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  made["grad_norms"] = _save(fig, out / "mechanism_grad_norms.png")

  # 3. Influence of the first iteration and attention entropy over time.
  if mechanism.get("runs"):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, m in mechanism["runs"].items():
      row = runs.get(name)
      base = row and _by(runs, "transformer", row["data_seed"],
                         row["data_seed"])
      if not row or not base:
        continue
      flat = row["validation_loss"] - base["validation_loss"] > PLATEAU_NATS
      color = "tab:red" if flat else "tab:blue"
      influence = np.asarray(m["influence"])        # [steps, L, R]
      entropy = np.asarray(m["attention_entropy"])  # [steps, L]
      axes[0].plot(m["steps"], influence[:, :, 0].mean(1), color=color,
                   alpha=0.7)
      axes[1].plot(m["steps"], entropy.mean(1), color=color, alpha=0.7)
    for name, m in mechanism.get("transformer", {}).items():
      entropy = np.asarray(m["attention_entropy"])
      axes[1].plot(m["steps"], entropy.mean(1), "o-", color="black",
                   alpha=0.7, ms=4)
    axes[1].plot([], [], "o-", color="black", label="Transformer++")
    axes[1].legend(fontsize=8)
    axes[0].set_title("influence of iteration k=1 (mean over layers)")
    axes[1].set_title("attention entropy / log(keys) (mean over layers)")
    for ax in axes:
      ax.set_xlabel("step")
      ax.grid(alpha=0.3)
    axes[0].plot([], [], color="tab:red", label="plateaus")
    axes[0].plot([], [], color="tab:blue", label="trains")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    made["inside"] = _save(fig, out / "mechanism_inside.png")

  # 4. The next size: training loss per data order, tiny runs dashed.
  scale_orders = scale_orders_done(results)
  if scale_orders:
    fig, axes = plt.subplots(1, len(scale_orders),
                             figsize=(5 * len(scale_orders), 3.8),
                             sharey=True, squeeze=False)
    colors = {"transformer": ("black", "Transformer++"),
              "iiet": ("tab:red", "IIET (SPEC init)"),
              "iiet_inherit": ("tab:blue", "IIET, inherit")}
    for ax, d in zip(axes[0], scale_orders):
      for variant, (color, label) in colors.items():
        for prefix, style, width in (("scale_", "-", 1.4), ("", ":", 1.0)):
          row = _by(runs, prefix + variant, d, d)
          if row:
            y = _smooth(row["train"]["loss"])
            ax.plot(np.arange(len(y)) + 13, y, style, color=color, lw=width,
                    label=label + (" 8L d=256" if prefix else " tiny"))
      ax.set_title(f"data order {d}")
      ax.set_xlabel("step")
      ax.grid(alpha=0.3)
      ax.set_ylim(3.0, 8)
    axes[0][0].set_ylabel("training loss (25-step mean)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    made["scale"] = _save(fig, out / "scale_loss.png")

  # 5. Remedies: paired difference to Transformer++ per search order.
  rows = remedy_rows(results, search)
  if rows:
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for k, r in enumerate(rows):
      xs = sorted(r["diffs"])
      ax.scatter(np.full(len(xs), k) + np.linspace(-0.2, 0.2, len(xs)),
                 [r["diffs"][x] for x in xs], s=18)
      ax.errorbar(k + 0.3, r["ci"]["mean"], fmt="o", color="black",
                  yerr=None if r["ci"]["lo"] is None else
                  [[r["ci"]["mean"] - r["ci"]["lo"]],
                   [r["ci"]["hi"] - r["ci"]["mean"]]], capsize=3)
    ax.axhline(0, color="gray", lw=1)
    ax.axhline(PLATEAU_NATS, color="tab:red", lw=1, ls="--",
               label=f"plateau (+{PLATEAU_NATS} nat)")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([LABELS.get(r["variant"], r["variant"])
                        for r in rows], fontsize=8)
    ax.set_ylabel("validation loss - Transformer++'s")
    ax.set_title("Each IIET start on 8 data orders (dots) and the mean "
                 "with its 95% CI", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    made["remedies"] = _save(fig, out / "remedies.png")
  return made


def scale_orders_done(results) -> list[int]:
  """The data orders with a finished Transformer++ run at the next size."""
  return sorted({r["data_seed"] for r in results["runs"].values()
                 if r["variant"] == "scale_transformer"})


def _save(fig, path: Path) -> Path:
  fig.savefig(path, dpi=110)
  from iiet_jax import plots
  plots.pyplot().close(fig)
  return path


def render(results, mechanism, figs: dict, base: Path) -> str:
  import plateau
  orders, search = plateau.MECHANISM_ORDERS, plateau.SEARCH_ORDERS
  rows = remedy_rows(results, search)
  link = lambda key, alt: (f"![{alt}]({os.path.relpath(figs[key], base)})"
                           if key in figs else "")
  lines = [
      "# Why IIET from scratch plateaus, and a start that trains",
      "",
      "Generated by `python bench/plateau_report.py` from "
      "`docs/plateau/results.json` (`python bench/plateau.py`) and "
      "`docs/plateau/mechanism.json` (`python bench/plateau_analysis.py`). "
      "Every run: size `tiny` of configs/reproduce.py (4 layers, d=128), "
      "600 steps of 8 x 128 tokens of the Python standard library, peak LR "
      "1e-3, 20 warm-up steps, cosine decay; `data.seed` sets the data "
      f"order, `seed` the initial weights. A run *plateaus* when its "
      f"validation loss ends more than {PLATEAU_NATS} nat above "
      "Transformer++ trained on the same batches.",
      "",
      "## The mechanism runs: 3 data orders x 3 inits",
      "",
      *mechanism_table(results, orders),
      "",
      "Validation loss at step 600 (difference to Transformer++ on the same "
      "data order).",
      "",
      link("loss", "training loss per data order"),
      "",
      link("grad_norms", "gradient norm per parameter group"),
      "",
      link("inside", "influence and attention entropy over training"),
      "",
      "## What each data order starts with",
      "",
      *documents_table(results, mechanism, search),
      "",
      "zlib ratio: compressed over raw size of a document (generated tables "
      "and dumps compress to a few percent, ordinary code to about 25%). "
      "The first 100 steps are the documents in the order the shuffle hands "
      "them to the packer, until 100 x 1,024 tokens.",
      "",
      "## Remedies on 8 search orders",
      "",
      f"Data orders {search[0]}-{search[-1]} (not the reproduction's "
      "seeds), init seed = data seed, each start beside Transformer++ on the "
      "same batches. A start *works* when it plateaus on none of the 8 "
      "and its mean paired difference is below zero.",
      "",
      *remedy_table(rows),
      "",
      link("remedies", "remedies"),
      "",
  ]
  scale = remedy_rows(results, plateau.SCALE_ORDERS, prefix="scale_")
  done = sorted(set().union(*(r["diffs"] for r in scale))) if scale else []
  if scale:
    lines += [
        "## At the next size (8 layers, d=256)", "",
        f"The same recipe and data at 8 layers, d=256, d_ff=704 (about 8x "
        f"the FLOPs per token of tiny), on data orders "
        f"{', '.join(map(str, done))} (init seed = data seed"
        + (f"; planned: {', '.join(map(str, plateau.SCALE_ORDERS))}, the "
           f"rest not run yet" if done != list(plateau.SCALE_ORDERS) else "")
        + f"). Validation loss at step 600 and "
        f"each start's difference to Transformer++ on the same batches, "
        f"beside the same order at tiny:", "",
        *scale_table(results, plateau.SCALE_ORDERS), "",
        *remedy_table(scale), "",
        "The `works` column needs 8 orders, so here it says no by "
        "construction.", ""]
    if "scale" in figs:
      lines += [link("scale", "training loss at the next size"), ""]
  if NOTES.exists():
    lines += ["## Findings", "", NOTES.read_text().strip(), ""]
  return "\n".join(lines)


def write(data: Path, out: Path) -> None:
  import plateau
  results = json.loads((data / "results.json").read_text())
  path = data / "mechanism.json"
  mechanism = (json.loads(path.read_text()) if path.exists()
               else {"runs": {}, "early_documents": {}})
  figs = figures(results, mechanism, plateau.MECHANISM_ORDERS,
                 plateau.SEARCH_ORDERS, data)
  out.write_text(render(results, mechanism, figs, out.parent))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default="docs/plateau")
  parser.add_argument("--out", default="docs/plateau.md")
  args = parser.parse_args()
  write(Path(args.data), Path(args.out))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
