"""bench/plateau_report.py: plateau counts and the remedy criterion."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import plateau_report  # noqa: E402


def _results(diffs: dict[str, list[float]], orders):
  runs = {}
  for d, order in enumerate(orders):
    runs[f"transformer/d{order}"] = dict(variant="transformer",
                                         data_seed=order, seed=order,
                                         validation_loss=5.0 + 0.1 * d)
    for variant, values in diffs.items():
      runs[f"{variant}/d{order}"] = dict(
          variant=variant, data_seed=order, seed=order,
          validation_loss=5.0 + 0.1 * d + values[d])
  return {"runs": runs}


def test_remedy_rows_count_plateaus_and_apply_the_criterion():
  orders = tuple(range(100, 108))
  diffs = {"iiet": [1.1, 1.0, 0.9, 0.1, 0.1, 0.6, 0.32, 0.45],
           "good": [-0.1, 0.29, 0.1, 0.2, -0.2, -0.3, -0.2, 0.1],
           "flat_once": [-0.5, -0.5, -0.5, -0.5, -0.5, -0.5, -0.5, 0.31]}
  rows = {r["variant"]: r for r in plateau_report.remedy_rows(
      _results(diffs, orders), orders)}
  assert set(rows) == set(diffs)           # Transformer++ is the baseline
  assert rows["iiet"]["plateaus"] == 6 and not rows["iiet"]["works"]
  assert rows["good"]["plateaus"] == 0 and rows["good"]["works"]
  np.testing.assert_allclose(rows["good"]["ci"]["mean"],
                             np.mean(diffs["good"]), atol=1e-12)
  # One plateau is one too many, whatever the mean.
  assert rows["flat_once"]["plateaus"] == 1
  assert not rows["flat_once"]["works"]
  # Fewer than 8 orders never counts as working.
  few = plateau_report.remedy_rows(_results({"good": diffs["good"]},
                                            orders[:4]), orders[:4])
  assert not few[0]["works"]


def test_scale_table_sets_each_size_beside_its_own_transformer():
  runs = {}
  def add(variant, order, loss):
    runs[f"{variant}/d{order}"] = dict(variant=variant, data_seed=order,
                                       seed=order, validation_loss=loss)
  add("transformer", 100, 5.0)
  add("iiet", 100, 6.0)                  # +1.00 at tiny: a plateau
  add("scale_transformer", 100, 4.0)
  add("scale_iiet", 100, 4.1)            # +0.10 at the next size
  add("scale_iiet_inherit", 100, 3.9)    # no tiny inherit run: "-"
  add("transformer", 101, 5.0)           # no run at the next size: no row
  table = plateau_report.scale_table({"runs": runs}, (100, 101))
  assert len(table) == 3
  assert table[2] == ("| 100 | 5.000 | 4.000 | +1.00 **plateau** | +0.10 "
                      "| - | -0.10 |")
