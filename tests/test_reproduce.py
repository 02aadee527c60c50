"""The reproduction experiment: its task, its verdicts, its plumbing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import choice_task  # noqa: E402
import reproduction_report  # noqa: E402


def _texts(seed=0, n=6):
  rng = np.random.default_rng(seed)
  words = ["def", "return", "self", "import", "value", "(x)", "if", "for"]
  return ["\n".join(" ".join(rng.choice(words, 6)) for _ in range(40))
          for _ in range(n)]


def test_choice_items_are_deterministic_and_point_at_the_true_continuation():
  texts = _texts(n=20)
  items = choice_task.items(texts, 50, seed=3)
  assert items == choice_task.items(texts, 50, seed=3)
  assert items != choice_task.items(texts, 50, seed=4)
  assert len(items) >= 45   # a few may be dropped as ambiguous
  answers = set()
  for item in items:
    choices, answer = item["choices"], item["answer"]
    assert len(choices) == 4 and choices.count(choices[answer]) == 1
    assert all(len(c) == choice_task.CONTINUATION for c in choices)
    # The right answer is what follows the context in some document.
    assert any(item["context"] + choices[answer] in t for t in texts)
    assert len(item["context"]) <= choice_task.CONTEXT
    answers.add(answer)
  assert answers == {0, 1, 2, 3}   # the answer position is shuffled


def test_choice_items_do_not_overlap():
  """No character of one item's context or answer is in another item's."""
  texts = _texts(n=10)
  rows = choice_task.items(texts, 10_000, seed=1)
  spans = []
  for item in rows:
    true = item["choices"][item["answer"]]
    hits = [(d, t.find(item["context"] + true)) for d, t in enumerate(texts)
            if item["context"] + true in t]
    assert len(hits) == 1
    d, start = hits[0]
    spans.append((d, start, start + len(item["context"]) + len(true)))
  spans.sort()
  for (d1, _, e1), (d2, s2, _) in zip(spans, spans[1:]):
    assert d1 != d2 or s2 >= e1
  # As many items as windows fit (a few dropped when a wrong answer equals
  # the true one).
  width = choice_task.CONTEXT + choice_task.CONTINUATION
  assert len(rows) >= 0.9 * sum(len(t) // width for t in texts)


def test_choice_task_folder_is_an_lm_eval_task(tmp_path):
  import yaml
  rows = choice_task.items(_texts(), 10, seed=0)
  (tmp_path / f"{choice_task.TASK}.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  (tmp_path / f"{choice_task.TASK}.yaml").write_text(choice_task.YAML)
  spec = yaml.safe_load(choice_task.YAML)
  assert spec["task"] == choice_task.TASK
  assert spec["output_type"] == "multiple_choice"
  assert spec["doc_to_target"] == "{{answer}}"
  assert [m["metric"] for m in spec["metric_list"]] == ["acc", "acc_norm"]


@pytest.mark.slow
def test_quick_reproduction_runs_every_system_end_to_end(tmp_path):
  root = tmp_path / "reproduce"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "bench/reproduce.py", "--quick", f"--root={root}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  last = json.loads(proc.stdout.strip().splitlines()[-1])
  expected = {"transformer", "pcformer", "iiet", "iiet_robust", "two_stage",
              "two_stage_spec_init", "transformer_equal_flops",
              "transformer_deep", "iiet_r1", "iiet_r2", "iiet_r4", "iiet_r8",
              "eiiet_budget0.25", "eiiet_budget0.5", "eiiet_budget1"}
  assert set(last) == expected
  for name, row in last.items():
    assert math.isfinite(row["validation_loss"]), name
    assert 0.0 <= row["accuracy"] <= 1.0, name
  report = (root / "reproduction.md").read_text()
  assert "| Transformer++ |" in report and "## The paper's claims" in report
  for png in ("validation_loss", "loss_vs_flops", "r_ablation",
              "iiad_tradeoff", "switch"):
    assert (root / "reproduction" / f"{png}.png").stat().st_size > 10_000
  results = json.loads((root / "results.json").read_text())
  # E-IIET really cut iterations, and its decode cost was measured.
  for name in ("eiiet_budget0.25", "eiiet_budget0.5"):
    row = results["systems"][name]
    assert sum(row["iterations"]) < 12 and 0 < row["decode_cost"] < 1.0
  # The two-stage runs started from their Transformer++ seed at the switch.
  events = [json.loads(line) for line in
            (root / "two_stage" / "seed_0" / "metrics.jsonl").read_text()
            .splitlines() if "event" in line]
  assert any(e["event"].startswith("resumed from step 30 (transformer)")
             for e in events)
  # Rerunning reuses every finished run: nothing is trained again.
  again = subprocess.run(
      [sys.executable, "bench/reproduce.py", "--quick", f"--root={root}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and "training (log" not in again.stdout
  assert json.loads(again.stdout.strip().splitlines()[-1]) == last


def test_committed_report_is_rendered_from_the_committed_results(tmp_path):
  """docs/reproduction.md holds nothing results.json does not: rendered
  again from it, it is the same text, and results.json stores no verdicts."""
  results = json.loads((ROOT / "docs" / "reproduction" / "results.json")
                       .read_text())
  assert "claims" not in results, "verdicts are derived, never stored"
  out = tmp_path / "reproduction.md"
  reproduction_report.write(results, out)
  committed = (ROOT / "docs" / "reproduction.md").read_text()
  assert out.read_text() == committed, (
      "docs/reproduction.md differs from what its results.json renders; "
      "run python bench/reproduction_report.py docs/reproduction/results.json")
  # The README's headline table is the same numbers.
  import reproduction_markdown
  readme = (ROOT / "README.md").read_text()
  derived = reproduction_report.derive(results)
  assert reproduction_markdown.with_headline(readme, derived) == readme, (
      "README.md's headline table differs from results.json; rerun the "
      "command above")


@pytest.mark.parametrize("summary,done", [
    ({"steps": 600, "total_steps": 600, "preempted": False}, True),
    ({"steps": 14, "total_steps": 600, "preempted": True}, False),
    ({"steps": 600, "total_steps": 600, "preempted": True}, False),
    ({"steps": 300, "total_steps": 600}, False), (None, False)])
def test_only_a_run_at_its_last_step_counts_as_finished(tmp_path, summary,
                                                        done):
  from iiet_jax.runs import finished_summary
  if summary is not None:
    (tmp_path / "summary.json").write_text(json.dumps(summary))
  assert (finished_summary(tmp_path) is not None) == done
