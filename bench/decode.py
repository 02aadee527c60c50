"""Decode speed against validation loss: Transformer++, PCformer, IIET, E-IIET.

  python bench/decode.py [--teacher=runs/tiny] [--taus=0,0.05,0.2,0.6,0.7,0.8]
      [--sizes=tiny,55m] [--rounds=5] [--no_distill] [--plot=docs/decode_bench.png]

Needs a trained IIET teacher: runs/tiny (`bash launch/local.sh`) or else the
reproduction's IIET (runs/reproduce/iiet/seed_0), trained first if missing. About
16 minutes on 2 CPU cores, 12 of them the six distillations, which later runs
reuse (then about 4). The default taus give six distinct r_t on that teacher.
Results and how to read them: docs/decode_bench.md.

Quality (teacher's size): influence on the teacher's validation batches, for
each tau the r_t it selects (iiad/selection.py), then the validation loss of
the teacher cut to those r_t with no training, and of an E-IIET distilled from
it by the real `iiet distill` stage (runs/bench_decode/tau_<tau>, the settings
of launch/local.sh). The distilled student that keeps every iteration (tau=0)
had the same extra training with no cut: `ctl` divides by its loss.
Transformer++ and PCformer are timed but not trained here.
Speed: random-init float32 models (speed does not depend on the weights):
prefill of a [batch, prompt] prompt into an empty cache and `new` greedy
decode steps in one jitted `fori_loop`, all models of a size round-robin,
medians, ratios to IIET (r=3, scanned). E-IIET rows unroll the layers, where
fewer iterations really cost less ("IIET unrolled" is the all-r_t=3 one);
the `scan` row is the masked scanned stack, which runs max(r_t) everywhere.
Sizes other than the teacher's have no teacher here: their r_t keep the share
of iterations each tau kept on the teacher, front-first (earlier layers keep
theirs first, as the influence shows), and are marked "derived".
The plot is drawn with matplotlib (the `plot` extra); the last line of output
is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from iiet_jax import plots
from iiet_jax.runs import open_model
from iiet_jax.data.loader import make_loaders
from iiet_jax.decode import decode_step, init_cache, prefill
from iiet_jax.iiad import influence as inf
from iiet_jax.iiad import report, selection
from iiet_jax.models import build_model

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"tiny": (4, 64, 64), "55m": (2, 64, 32)}  # batch, prompt, new
PAPER = {"cost": 0.45, "accuracy_kept": 0.994}  # E-IIET, SPEC.md section 5
DISTILL = ["--config.total_steps=150", "--config.optimizer.warmup_steps=10",
           "--config.eval_every=50", "--config.checkpoint.every=50"]


def quality(teacher: str, taus, workdir: Path, distill: bool) -> dict:
  """Teacher loss, and per tau: r_t, truncated and distilled losses."""
  opened = open_model(teacher)
  model, params = opened.model, opened.params
  loaders = make_loaders(opened.config)
  loaders.close()
  val = loaders.validation
  measured = inf.measure(model, params,
                         val[:opened.config.distill.influence_batches])
  print(report.table(measured.state_change, f"influence of {teacher} "
                     f"(step {opened.step})"), flush=True)
  out = {"teacher": teacher, "size": size_of(opened.config.variant),
         "iterations": list(model.config.iterations),
         "loss": inf.mean_loss(model, params, val), "taus": {}}
  by_r = {}  # taus that select the same r_t share one evaluation
  for tau in taus:
    r = selection.by_threshold(measured.state_change, tau)
    if r not in by_r:
      cut = build_model(dataclasses.replace(model.config, iterations=r))
      by_r[r] = {"iterations": list(r),
                 "truncated": inf.mean_loss(cut, params, val)}
      if distill:
        by_r[r].update(distilled(opened.config.variant, teacher, tau,
                                 workdir))
        if by_r[r]["student_iterations"] != list(r):
          raise SystemExit(f"tau={tau}: the distill stage chose "
                           f"{by_r[r]['student_iterations']}, this bench {r}")
    out["taus"][tau] = row = by_r[r]
    print(f"tau={tau:g}: r_t {list(r)}, truncated loss {row['truncated']:.4f}"
          + (f", distilled {row['distilled']:.4f}" if distill else ""),
          flush=True)
  # The student that keeps every iteration: the same extra training, no cut.
  out["control"] = next((row["distilled"] for row in out["taus"].values()
                         if row["iterations"] == out["iterations"]
                         and "distilled" in row), None)
  return out


def teacher(path: str) -> str:
  """The teacher to use: `path`, or runs/tiny, or the reproduction's IIET
  (configs/reproduce.py, seed 0), trained here when it is missing."""
  if path:
    return path
  if (ROOT / "runs" / "tiny" / "summary.json").exists():
    return str(ROOT / "runs" / "tiny")
  workdir = ROOT / "runs" / "reproduce" / "iiet" / "seed_0"
  if not (workdir / "summary.json").exists():
    print(f"no teacher yet: training the reproduction's IIET in {workdir} "
          f"(about 5 minutes)", flush=True)
    cmd = [sys.executable, "-m", "iiet_jax.main", "train",
           "--config=configs/reproduce.py:size=tiny,system=iiet",
           f"--workdir={workdir}", "--config.seed=0"]
    if subprocess.run(cmd, cwd=ROOT).returncode:
      raise SystemExit(f"training the teacher failed: {' '.join(cmd)}")
  return str(workdir)


def size_of(variant: str) -> str:
  """'model=iiet,size=tiny' or 'size=tiny,system=iiet' -> 'tiny'."""
  return dict(item.partition("=")[::2] for item in variant.split(","))["size"]


def distilled(variant: str, teacher: str, tau: float, root: Path) -> dict:
  """Runs (or reads the finished) `iiet distill` into root/tau_<tau>."""
  workdir = root / f"tau_{tau:g}"
  summary = workdir / "summary.json"
  if not summary.exists():
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "iiet_jax.main", "distill",
           f"--config=configs/lm.py:model=iiet,size={size_of(variant)}",
           f"--workdir={workdir}",
           f"--config.distill.teacher={teacher}",
           f"--config.distill.tau={tau}", *DISTILL]
    print(f"distilling tau={tau:g} into {workdir} (log: distill.log)",
          flush=True)
    with open(workdir / "distill.log", "w") as log:
      if subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=log).returncode:
        raise SystemExit(f"{' '.join(cmd)} failed; see {workdir}/distill.log")
  s = json.loads(summary.read_text())
  return {"distilled": s["student_validation_loss"],
          "distill_teacher": s["teacher_validation_loss"],
          "student_iterations": s["student_iterations"],
          "distill_steps": s["steps"], "workdir": str(workdir)}


def derived(share: float, num_layers: int, r: int) -> tuple[int, ...]:
  """The same share of num_layers * r iterations, earlier layers first."""
  keep = round(share * num_layers * r)
  return tuple(min(r, max(0, keep - r * t)) for t in range(num_layers))


def load_model(arch: str, size: str, overrides: dict):
  from iiet_jax import overrides as ov
  values = ov.load(f"{ROOT / 'configs' / 'lm.py'}:model={arch},size={size}"
                   ).model.to_dict()
  values.update(overrides, dtype="float32")
  return build_model(values)


def timed(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def build(model, batch: int, prompt_len: int, new: int) -> dict:
  """Jitted prefill and decode loop for `model`, compiled and warmed up."""
  tokens = jnp.asarray(np.random.default_rng(0).integers(
      0, model.config.vocab_size, (batch, prompt_len)), jnp.int32)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), tokens))["params"]

  @jax.jit
  def run_prefill(params, tokens):
    return prefill(model, params, tokens,
                   init_cache(model, batch, prompt_len + new))

  @jax.jit
  def run_decode(params, token_B, cache):
    def step(_, state):
      token_B, cache = state
      logits_BV, cache = decode_step(model, params, token_B, cache)
      return jnp.argmax(logits_BV, -1).astype(jnp.int32), cache
    return jax.lax.fori_loop(0, new, step, (token_B, cache))[0]

  start = time.perf_counter()
  logits_BTV, cache = jax.block_until_ready(run_prefill(params, tokens))
  token_B = jnp.argmax(logits_BTV[:, -1], -1).astype(jnp.int32)
  jax.block_until_ready(run_decode(params, token_B, cache))
  return dict(prefill=lambda: run_prefill(params, tokens),
              decode=lambda: run_decode(params, token_B, cache),
              compile_s=time.perf_counter() - start, prefill_s=[],
              decode_s=[], nfe=sum(model.config.block_evaluations_per_layer()))


def rows_for(size: str, q: dict) -> list[tuple]:
  """(name, arch, model overrides, quality row, r_t) for one size."""
  full = load_model("iiet", size, {}).config.iterations
  own = size == q["size"]
  none = {} if own else {"note": f"no {size} teacher here"}
  nt = {"note": "not trained here (timed only)"}
  rows = [("Transformer++", "transformer", {}, nt, None),
          ("PCformer", "pcformer", {}, nt, None),
          ("IIET", "iiet", {}, {"truncated": q["loss"]} if own else none,
           full)]
  seen, cut = set(), None
  for tau, row in q["taus"].items():
    share = sum(row["iterations"]) / sum(q["iterations"])
    r = tuple(row["iterations"]) if own else derived(share, len(full),
                                                     max(full))
    if r in seen:
      continue
    seen.add(r)
    name = (f"IIET unrolled (tau={tau:g})" if r == full else
            f"E-IIET tau={tau:g}" + ("" if own else " derived"))
    rows.append((name, "iiet", dict(iterations=r, scan_layers=False),
                 row if own else none, r))
    if cut is None and 0 < sum(r) < sum(full):
      cut = (f"E-IIET tau={tau:g} scan", r)
  if cut:
    rows.append((cut[0], "iiet", dict(iterations=cut[1]), none, cut[1]))
  return rows


def speed(size: str, q: dict, rounds: int) -> dict:
  """Times every row of `size` round-robin; medians, ratios to IIET."""
  batch, prompt_len, new = SHAPES[size]
  runs = {}
  for name, arch, overrides, qrow, r in rows_for(size, q):
    runs[name] = build(load_model(arch, size, overrides), batch, prompt_len,
                       new)
    runs[name].update(quality=qrow, iterations=r)
    print(f"{size} {name}: compiled in {runs[name]['compile_s']:.1f}s",
          flush=True)
  for _ in range(rounds):
    for run in runs.values():
      run["prefill_s"].append(timed(run["prefill"]))
      run["decode_s"].append(timed(run["decode"]))
  base_p = statistics.median(runs["IIET"]["prefill_s"])
  base_d = statistics.median(runs["IIET"]["decode_s"])
  results = {}
  for name, run in runs.items():
    p = statistics.median(run["prefill_s"])
    d = statistics.median(run["decode_s"])
    qrow, r = run["quality"], run["iterations"]
    res = results[name] = {
        "iterations": list(r) if r else None, "nfe": run["nfe"],
        "prefill_ms": round(1e3 * p, 2), "prefill_ratio": round(p / base_p, 3),
        "decode_tokens_per_s": round(batch * new / d, 1),
        "decode_speed_ratio": round(base_d / d, 3),
        "decode_cost": round(d / base_d, 3)}
    for key in ("truncated", "distilled"):
      if key in qrow:
        res[f"loss_{key}"] = round(qrow[key], 4)
        res[f"loss_{key}_rel"] = round(qrow[key] / q["loss"], 4)
    if "distilled" in qrow and q.get("control"):
      res["loss_distilled_rel_control"] = round(qrow["distilled"]
                                                / q["control"], 4)
    if "note" in qrow:
      res["quality"] = qrow["note"]
  print(f"\n{size}: batch {batch}, prompt {prompt_len}, {new} decode steps, "
        f"float32, median of {rounds} round-robin rounds, "
        f"{jax.devices()[0].device_kind}; ratios to IIET (r=3, scanned); "
        f"cost = 1 / decode speed ratio; validation loss of the teacher cut "
        f"to r_t (trunc) and distilled (distil), rel = / IIET teacher's, "
        f"ctl = / distilled with every iteration (same extra training)")
  print_table(results)
  return results


def print_table(results: dict) -> None:
  cols = ("loss_truncated", "loss_truncated_rel", "loss_distilled",
          "loss_distilled_rel", "loss_distilled_rel_control")
  print(f"{'model':27s} {'r_t':>23s} {'NFE':>4s} {'prefill ms':>10s} "
        f"{'xIIET':>6s} {'tok/s':>7s} {'xIIET':>6s} {'cost':>5s} "
        f"{'trunc':>6s} {'rel':>6s} {'distil':>6s} {'rel':>6s} {'ctl':>6s}")
  for name, r in results.items():
    blank = "n/t" if r.get("quality", "").startswith("not trained") else "-"
    print(f"{name:27s} {','.join(map(str, r['iterations'] or '-')):>23s} "
          f"{r['nfe']:4d} {r['prefill_ms']:10.2f} {r['prefill_ratio']:6.2f} "
          f"{r['decode_tokens_per_s']:7.0f} {r['decode_speed_ratio']:6.2f} "
          f"{r['decode_cost']:5.2f} " + " ".join(
              f"{r[c]:6.3f}" if c in r else f"{blank:>6s}" for c in cols))
  notes = sorted({r["quality"] for r in results.values() if "quality" in r})
  if any("derived" in name for name in results):
    notes.append("derived: r_t keep the share of iterations each tau kept on "
                 "the teacher, earlier layers first")
  print("  " + "; ".join(n.replace("not trained", "n/t: not trained")
                         for n in notes))


def plot(path: str, results: dict, teacher_loss: float) -> None:
  """Decode cost (x) against validation loss (y) at the teacher's size."""
  plt = plots.pyplot()
  colors = {"loss_truncated": "tab:blue", "loss_distilled": "tab:orange"}
  labels = {"loss_truncated": "cut to r_t, no training",
            "loss_distilled": "distilled (IIAD, 150 steps)"}
  losses = [r[k] for r in results.values() for k in colors if k in r]
  # Up to 3% above the teacher; points beyond sit on the top edge, labelled.
  lo, hi = min(losses) - 0.02, min(max(losses), 1.03 * teacher_loss) + 0.02
  fig, ax = plt.subplots(figsize=(9, 5.8), dpi=100)
  ax.axhline(teacher_loss, color="0.45", ls="--", lw=1, label="IIET teacher")
  for n, r in results.items():
    if n.startswith("IIET unrolled") and "loss_distilled" in r:
      ax.axhline(r["loss_distilled"], color=colors["loss_distilled"], ls=":",
                 lw=1, label="distilled, no cut (same training)")
  ax.axvline(PAPER["cost"], color="tab:red", ls="--", lw=1,
             label=f"paper: {PAPER['cost']:.0%} cost, "
                   f"{PAPER['accuracy_kept']:.1%} accuracy")
  for name in ("Transformer++", "PCformer"):
    c = results[name]["decode_cost"]
    ax.axvline(c, color="tab:purple", ls=":", lw=1)
    ax.annotate(name, (c, 0.5), xycoords=("data", "axes fraction"),
                xytext=(-3, 0), textcoords="offset points", rotation=90,
                ha="right", va="center", fontsize=8, color="tab:purple")
  for key, color in colors.items():
    pts = sorted((r["decode_cost"], r[key], n) for n, r in results.items()
                 if key in r and "scan" not in n)
    if not pts:
      continue
    cost = [c for c, _, _ in pts]
    ax.plot(cost, [min(v, hi) for _, v, _ in pts], "o-", color=color, lw=1.8,
            ms=5, label=labels[key], clip_on=False)
    for c, v, n in pts:
      if key == "loss_truncated" and "tau=" in n:
        ax.annotate(n.split("tau=")[1].split()[0].strip(")"), (c, lo),
                    xytext=(0, 4), textcoords="offset points", ha="center",
                    fontsize=8)
      if v > hi:
        ax.annotate(f"{v:.2f}", (c, hi), xytext=(6, -4),
                    textcoords="offset points", ha="left", va="top",
                    fontsize=8, color=color)
  ax.set_xlim(0, max(1.1, max(r["decode_cost"] for r in results.values())
                     + 0.1))
  ax.set_ylim(lo, hi)
  ax.set_xlabel("decode cost relative to IIET (1 / decode speed ratio)")
  ax.set_ylabel("validation loss (nats/token)")
  ax.set_title("E-IIET: decode cost against validation loss (points "
               "labelled by tau; above the top edge: value written)",
               fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="upper right")
  fig.tight_layout()
  Path(path).write_bytes(plots.png_bytes(fig))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--teacher", default="", help="a trained IIET run; "
                      "default runs/tiny (the main job's) if it exists, "
                      "else the reproduction's IIET, trained if missing")
  parser.add_argument("--taus", default="0,0.05,0.2,0.6,0.7,0.8")
  parser.add_argument("--sizes", default="tiny,55m")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--workdir", default="runs/bench_decode")
  parser.add_argument("--no_distill", action="store_true")
  parser.add_argument("--plot", default="docs/decode_bench.png")
  args = parser.parse_args()
  if args.plot:
    try:
      plots.pyplot()  # now, not after the measurements
    except plots.PlotError as err:
      raise SystemExit(f"--plot: {err} (or pass --plot=)")
  start = time.perf_counter()
  args.teacher = teacher(args.teacher)
  q = quality(args.teacher, [float(t) for t in args.taus.split(",")],
              Path(args.workdir), not args.no_distill)
  out = {"teacher": q["teacher"], "teacher_loss": round(q["loss"], 4),
         "control_loss": q["control"] and round(q["control"], 4), "paper": PAPER, "r_t": {f"{t:g}": r["iterations"]
                                 for t, r in q["taus"].items()}}
  for size in args.sizes.split(","):
    out[size] = speed(size, q, args.rounds)
  if args.plot and q["size"] in out:
    plot(args.plot, out[q["size"]], q["loss"])
    print(f"plot: {args.plot}")
  print(f"total {time.perf_counter() - start:.0f}s")
  print(json.dumps(out))


if __name__ == "__main__":
  main()
