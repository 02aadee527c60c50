"""The reproduction's figures (matplotlib), drawn from results.json alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from iiet_jax import plots

plt = plots.pyplot()  # Agg; a clear PlotError without matplotlib

MAIN = ("transformer", "pcformer", "iiet", "two_stage", "two_stage_spec_init",
        "transformer_equal_flops", "transformer_deep")
COLORS = {"transformer": "tab:gray", "pcformer": "tab:green",
          "iiet": "tab:blue", "two_stage": "tab:orange",
          "two_stage_spec_init": "tab:red",
          "transformer_equal_flops": "black", "transformer_deep": "tab:brown"}


def _band(ax, x, curve, label, color, style="-"):
  mean = np.asarray(curve["mean"])
  ax.plot(x, mean, style, color=color, label=label, lw=1.6)
  if curve.get("std"):
    std = np.asarray(curve["std"])
    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, lw=0)


def validation_curves(results, out: Path) -> Path:
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  for name in MAIN:
    curve = results["curves"].get(name)
    if not curve or not curve["steps"]:
      continue
    row = results["systems"][name]
    _band(ax, curve["steps"], curve, f"{row['label']} (n={row['seeds']})",
          COLORS[name], "--" if name == "transformer_equal_flops" else "-")
  ax.set_xlabel("training step")
  ax.set_ylabel("validation loss (nats/token)")
  ax.set_title("Validation loss, mean and ±1 std over seeds")
  steps = results["systems"]["transformer"]["steps"]
  ax.set_xlim(0, steps * 1.02)
  _tight_y(ax, results, MAIN)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, out / "validation_loss.png")


def _tight_y(ax, results, names):
  finals = [results["systems"][n]["loss_mean"] for n in names
            if n in results["systems"]]
  lo = min(finals)
  ax.set_ylim(lo - 0.15, lo + 1.6)


def loss_vs_flops(results, out: Path) -> Path:
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  for name, row in results["systems"].items():
    if name.startswith("eiiet"):  # their cost is the teacher's plus this
      continue
    color = COLORS.get(name, "tab:purple")
    ax.errorbar(row["train_flops"], row["loss_mean"],
                yerr=row["loss_std"] or 0, fmt="o", color=color, capsize=3)
    ax.annotate(row["label"], (row["train_flops"], row["loss_mean"]),
                fontsize=7, xytext=(4, 3), textcoords="offset points")
  for name in ("transformer", "iiet", "transformer_equal_flops"):
    curve = results["curves"].get(name)
    row = results["systems"].get(name)
    if curve and curve["steps"] and row:
      per_step = row["train_flops"] / row["steps"]
      ax.plot(np.asarray(curve["steps"]) * per_step, curve["mean"],
              color=COLORS[name], lw=1, alpha=0.6)
  ax.set_xscale("log")
  ax.set_xlabel("training FLOPs (analytic, train/flops.py)")
  ax.set_ylabel("final validation loss")
  ax.set_title("Loss against training compute (lines: validation curves "
               "of T++, IIET, T++ at IIET's FLOPs)", fontsize=10)
  _tight_y(ax, results, results["systems"])
  ax.grid(alpha=0.3, which="both")
  return _save(fig, out / "loss_vs_flops.png")


def r_ablation(results, out: Path) -> Path:
  sy = results["systems"]
  names = [("iiet_r1", 1), ("iiet_r2", 2), ("iiet", 3), ("iiet_r4", 4)]
  points = [(r, sy[n]) for n, r in names if n in sy]
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.5))
  for ax, key, label in ((a1, "loss", "validation loss"),
                         (a2, "acc", "choice accuracy")):
    ys = [p[f"{key}_mean"] for _, p in points]
    errs = [p[f"{key}_std"] or 0 for _, p in points]
    ax.errorbar([r for r, _ in points], ys, yerr=errs, fmt="o-",
                color="tab:blue", capsize=3)
    tf = sy.get("transformer")
    if tf:
      ax.axhline(tf[f"{key}_mean"], color="tab:gray", ls="--",
                 label="Transformer++")
    ax.set_xlabel("implicit iterations r")
    ax.set_ylabel(label)
    ax.set_xticks([r for r, _ in points])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle("Iteration ablation (r=3: mean ± std over seeds)")
  return _save(fig, out / "r_ablation.png")


def iiad_tradeoff(results, out: Path) -> Path:
  sy = results["systems"]
  rows = [("IIET (teacher)", 1.0, sy.get("iiet"))]
  rows += [(r["label"], r.get("decode_cost"), r) for n, r in sy.items()
           if n.startswith("eiiet")]
  tf_cost = results["decode_costs"].get("transformer")
  if tf_cost:
    rows.append(("Transformer++", tf_cost, sy.get("transformer")))
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.5, 3.5))
  for ax, key, label in ((a1, "loss", "validation loss"),
                         (a2, "acc", "choice accuracy")):
    for name, cost, row in rows:
      if row is None or cost is None:
        continue
      ax.errorbar(cost, row[f"{key}_mean"], yerr=row[f"{key}_std"] or 0,
                  fmt="o", capsize=3)
      ax.annotate(name, (cost, row[f"{key}_mean"]), fontsize=7,
                  xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("decode cost relative to IIET (measured)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  fig.suptitle("IIAD: what cutting iterations trades")
  return _save(fig, out / "iiad_tradeoff.png")


def switch_curves(results, out: Path) -> Path:
  curves = results["switch_curves"]
  switch = results["systems"].get("two_stage", {}).get("switch")
  fig, ax = plt.subplots(figsize=(7.5, 4))
  for name in ("transformer", "two_stage_spec_init", "two_stage"):
    curve = curves.get(name)
    if not curve or not curve["steps"] or switch is None:
      continue
    steps = np.asarray(curve["steps"])
    keep = steps >= switch - 50
    sub = {"mean": list(np.asarray(curve["mean"])[keep]),
           "std": list(np.asarray(curve["std"])[keep]) if curve["std"]
           else None}
    label = results["systems"][name]["label"]
    _band(ax, steps[keep], sub, label, COLORS[name])
  if switch is not None:
    ax.axvline(switch, color="k", lw=0.8, ls=":")
  ax.set_xlabel("training step")
  ax.set_ylabel("training loss (same batches for all)")
  ax.set_title("Around the switch: mean ± std over seeds")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, out / "switch.png")


def _save(fig, path: Path) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def draw(results, out: Path) -> dict[str, Path]:
  return {"validation": validation_curves(results, out),
          "flops": loss_vs_flops(results, out),
          "ablation": r_ablation(results, out),
          "iiad": iiad_tradeoff(results, out),
          "switch": switch_curves(results, out)}
