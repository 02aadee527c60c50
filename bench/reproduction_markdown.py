"""docs/reproduction.md from results.json (see bench/reproduction_report.py).

The discussion at the end is written by hand in docs/reproduction_notes.md
and included as it is, so redrawing the numbers never loses it.
"""

from __future__ import annotations

from pathlib import Path

ORDER = ("transformer", "pcformer", "iiet", "iiet_robust", "two_stage",
         "two_stage_spec_init",
         "eiiet_budget0.25", "eiiet_budget0.5", "eiiet_budget1",
         "transformer_equal_flops",
         "transformer_deep", "iiet_r1", "iiet_r2", "iiet_r4", "iiet_r8")
NOTES = Path(__file__).resolve().parents[1] / "docs" / "reproduction_notes.md"


def _pm(mean, std, f=".4f", scale=1.0):
  if mean is None:
    return "-"
  text = format(mean * scale, f)
  return text + (f" ± {format(std * scale, f)}" if std is not None else "")


def _signed(v, f):
  return "-" if v is None else format(v, "+" + f)


def _paired(ci):
  if not ci or ci.get("lo") is None:
    return "-"
  return f"{ci['mean']:+.4f} [{ci['lo']:+.4f}, {ci['hi']:+.4f}]"


def _held_out(results) -> str:
  tokens = results.get("held_out_tokens")
  if tokens is None:
    return "8 batches of the validation split"
  return (f"the held-out documents ({tokens:,.0f} tokens, each document's "
          f"first 1,024)")


def system_table(results) -> list[str]:
  lines = ["| system | NFE | parameters | seeds | validation loss | "
           "accuracy (%) | Δ loss vs T++ | Δ acc vs T++ (points) | "
           "Δ loss vs T++, paired by seed [95% CI] | training FLOPs | wall time (s) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  sy = results["systems"]
  for name in [n for n in ORDER if n in sy] + [n for n in sy
                                               if n not in ORDER]:
    r = sy[name]
    wall = "-" if r["wall_s_mean"] is None else f"{r['wall_s_mean']:.0f}"
    lines.append(
        f"| {r['label']} | {r['nfe']} | {r['params']:,} | {r['seeds']} | "
        f"{_pm(r['loss_mean'], r['loss_std'])} | "
        f"{_pm(r['acc_mean'], r['acc_std'], '.1f', 100)} | "
        f"{_signed(r.get('loss_vs_tf'), '.4f')} | "
        f"{_signed(r.get('acc_vs_tf'), '.1f')} | "
        f"{_paired(r.get('paired_loss_vs_tf'))} | "
        f"{r['train_flops']:.3g} | {wall} |")
  return lines


def claims_table(results) -> list[str]:
  lines = ["| claim (paper) | paper | ours | verdict |", "|---|---|---|---|"]
  for c in results["claims"]:
    verdict = c["verdict"]
    if "loss_verdict" in c:
      verdict += f" (on loss: {c['loss_verdict']})"
    lines.append(f"| {c['claim']} | {c['paper']} | {c['ours']} | "
                 f"**{verdict}** |")
  return lines


def jump_table(results) -> list[str]:
  jumps = results["jumps"]
  if not jumps:
    return []
  options = list(next(iter(jumps.values()))["iiet"])
  lines = ["| switch init (history + norms) | validation loss before any "
           "IIET step | jump over Transformer++ |", "|---|---|---|"]
  tf = [j["transformer"] for j in jumps.values()]
  mean = lambda xs: sum(xs) / len(xs)
  lines.append(f"| Transformer++ at the switch step | {mean(tf):.4f} | - |")
  for option in options:
    vals = [j["iiet"][option] for j in jumps.values()]
    diffs = [j["iiet"][option] - j["transformer"] for j in jumps.values()]
    lines.append(f"| {option} | {mean(vals):.4f} | "
                 f"{mean(diffs):+.4f} (seeds: "
                 f"{', '.join(f'{d:+.3f}' for d in diffs)}) |")
  return lines


def eiiet_table(results) -> list[str]:
  sy = results["systems"]
  rows = [(n, r) for n, r in sy.items() if n.startswith("eiiet")]
  if not rows:
    return []
  control = sy.get("eiiet_budget1", sy.get("iiet", {}))
  t_loss = control.get("losses", [None])[0]
  t_acc = control.get("accs", [None])[0]
  lines = ["| student | r_t | NFE | decode cost vs IIET | validation loss "
           "(control) | accuracy % (control) | accuracy kept |",
           "|---|---|---|---|---|---|---|"]
  for _, r in rows:
    cost = r.get("decode_cost")
    kept = r["acc_mean"] / t_acc if t_acc else None
    lines.append(
        f"| {r['label']} | {','.join(map(str, r['iterations']))} | "
        f"{r['nfe']} | {'-' if cost is None else f'{cost:.2f}'} | "
        f"{r['loss_mean']:.4f} ({t_loss:.4f}) | "
        f"{100 * r['acc_mean']:.1f} ({100 * t_acc:.1f}) | "
        f"{'-' if kept is None else f'{100 * kept:.1f}%'} |")
  return lines


HEADLINE = ("transformer", "pcformer", "iiet", "iiet_robust", "two_stage",
            "transformer_equal_flops")
HEADLINE_BEGIN = ("<!-- headline: written by bench/reproduction_report.py "
                  "from docs/reproduction/results.json -->")
HEADLINE_END = "<!-- /headline -->"


def headline(results) -> str:
  """The README's table of the main systems (between the markers)."""
  sy = results["systems"]
  lines = ["| system | seeds | validation loss | accuracy % | Δ loss vs "
           "Transformer++, paired [95% CI] | training FLOPs |",
           "|---|---|---|---|---|---|"]
  for name in HEADLINE:
    if name not in sy:
      continue
    r = sy[name]
    lines.append(f"| {r['label']} | {r['seeds']} | "
                 f"{_pm(r['loss_mean'], r['loss_std'], '.3f')} | "
                 f"{_pm(r['acc_mean'], r['acc_std'], '.1f', 100)} | "
                 f"{_paired(r.get('paired_loss_vs_tf'))} | "
                 f"{r['train_flops']:.2g} |")
  return "\n".join(lines)


def with_headline(readme: str, results) -> str:
  """`readme` with the text between the headline markers replaced."""
  begin, end = readme.find(HEADLINE_BEGIN), readme.find(HEADLINE_END)
  if begin < 0 or end < begin:
    raise ValueError("README.md has no headline markers")
  return (readme[:begin + len(HEADLINE_BEGIN)] + "\n" + headline(results)
          + "\n" + readme[end:])


def render(results, figures: dict) -> str:
  sy = results["systems"]
  tf = sy.get("transformer", {})
  minutes = results["seconds"] / 60
  head = [
      "# Does IIET help? The paper's claims in miniature",
      "",
      "Generated by `python bench/reproduce.py` (tables and figures from "
      "`runs/reproduce/results.json`, copied to "
      "`docs/reproduction/results.json`; redraw with `python "
      "bench/reproduction_report.py docs/reproduction/results.json`).",
      "",
      f"- Machine: {results['machine']}, CPU only, float32. This "
      f"invocation of the command took {minutes:.0f} minutes; the training "
      f"runs in it took {results.get('train_seconds', 0) / 60:.0f} "
      f"minutes in all"
      + (" (--quick: plumbing only, not results)" if results["quick"]
         else "") + ".",
      f"- Size `{results['size']}` of configs/lm.py (4 layers, d=128, 4 "
      f"heads, vocabulary 2048), {tf.get('steps')} steps of 8 x 128 "
      f"tokens on the Python standard library corpus, peak LR 1e-3 with "
      f"20 warm-up steps and cosine decay; seed s of every system trains "
      f"on data order s from init s, so systems are compared paired by "
      f"seed.",
      f"- Validation loss: the fixed validation pass over "
      f"{_held_out(results)}. Accuracy: "
      "lm-evaluation-harness on each run's Hugging Face export, task "
      f"`iiet_heldout_choice` (bench/choice_task.py): "
      f"{results.get('task_items')} items generated "
      "from the validation split, the true 32-character continuation of a "
      "held-out snippet against three from other held-out places; chance "
      "is 25%.",
      "- Verdicts (bench/stats.py): the difference between two systems on "
      "the same seed, its mean over seeds and 95% Student-t interval. "
      "*Reproduced*: the interval lies on the paper's side of zero; "
      "*refuted*: it lies on the other side, or excludes the paper's "
      "effect; otherwise *inconclusive*, with the effect this number of "
      "seeds could detect (the interval's half-width).",
      "",
      "## Systems", "", *system_table(results), "",
      "NFE: block evaluations per token. Training FLOPs: analytic "
      "(train/flops.py, 3x forward), two-stage counts its Transformer++ "
      "phase at Transformer++ cost, E-IIET counts its distillation steps "
      "(student training plus the frozen teacher's forward), not the "
      "teacher's own training. Wall time: the run's process from start to "
      "end (compilation included); two-stage adds 75% of its seed's "
      "Transformer++ run for the shared phase.",
      "", "## The paper's claims", "", *claims_table(results), "",
      "## The switch (Transformer++ -> IIET)", "",
      "Validation loss of the switched model before any IIET step, for "
      "each initialisation of the new history parameters "
      "(bench/switch_jump.py, every Transformer++ seed at its switch "
      "step; stages/switch_init.py defines the options):", "",
      *jump_table(results), "",
      f"![training loss around the switch]({figures['switch']})", "",
      "## IIAD: E-IIET from IIET (seed 0)", "",
      "The teacher is system 3 (IIET from scratch), the only IIET whose "
      "iterations trained for the whole run, so its influence measures "
      "learned iterations; a two-stage teacher's iterations have had a "
      "quarter of the steps. Iteration budgets (`distill.budget`) replace "
      "thresholds so the cut is the same whatever the influence values; "
      "decode cost as bench/decode.py measures it (random-init float32 "
      "models, prefill then greedy decode, median of 5 rounds, unrolled "
      "layers). The control keeps every iteration and gets the same "
      "distillation steps: distilling is also extra training, so the cut "
      "is measured against it, not against the teacher.", "",
      *eiiet_table(results), "",
      "## Figures", "",
      f"![validation loss]({figures['validation']})", "",
      f"![loss against FLOPs]({figures['flops']})", "",
      f"![r ablation]({figures['ablation']})", "",
      f"![IIAD trade-off]({figures['iiad']})", ""]
  if NOTES.exists() and not results["quick"]:
    head += ["## Discussion", "", NOTES.read_text().strip(), ""]
  return "\n".join(head)
