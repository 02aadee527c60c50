"""Imports point down: no module of iiet_jax imports a higher layer (and no
test imports conftest.py).

The layers, lowest first (a unit is a top-level module or package of
iiet_jax; units on one line are peers and import none of each other):

  errors                              the UserError base every layer raises
  hostenv, storage, plots, pytorch    host set-up, file storage, figures, the
                                      PyTorch twin shipped in exports
  models                              the Flax architectures
  parallel, overrides                 meshes and sharding; config files
  checkpoint, data                    Orbax I/O; corpora, tokenizers, loaders
  train, decode                       the loop over a plan, steps, state,
                                      merge / warm start; KV-cache decoding
  runs                                a saved run opened as model + params
  iiad, export                        influence and selection; HF folders
  stages                              what is trained when (plans)
  preflight, sweep, aot               checks before a run, sweeps, AOT compile
  cli                                 the command line
  main                                `python -m iiet_jax.main`

Every import counts, also those inside functions. A new unit must be placed
in LAYERS before it can be imported at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "iiet_jax"

LAYERS = (
    ("errors",),
    ("hostenv", "storage", "plots", "pytorch"),
    ("models",),
    ("parallel", "overrides"),
    ("checkpoint", "data"),
    ("train", "decode"),
    ("runs",),
    ("iiad", "export"),
    ("stages",),
    ("preflight", "sweep", "aot"),
    ("cli",),
    ("main",),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str | None:
  """iiet_jax.train.loop -> train; iiet_jax(.__init__) itself -> None."""
  parts = module.split(".")
  if parts[0] != "iiet_jax" or len(parts) < 2 or parts[1] == "__init__":
    return None
  return parts[1]


def imported_units(source: str, module: str) -> set[str]:
  """The units of iiet_jax that `source` imports anywhere in its body;
  `module` is its dotted path (a package's ends in `.__init__`)."""
  units = set()
  package = module.split(".")
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the module's own package upward
        base = ".".join(package[:len(package) - node.level] +
                        ([base] if base else []))
      # `from iiet_jax import train` names a unit in the imported names.
      names = [f"{base}.{alias.name}" if base == "iiet_jax" else base
               for alias in node.names]
    else:
      continue
    units.update(u for u in map(_unit, names) if u is not None)
  return units


def violations(graph: dict[str, set[str]]) -> list[str]:
  """Every edge of `graph` (unit -> units it imports) that does not point
  to a strictly lower layer."""
  bad = []
  for unit, imported in sorted(graph.items()):
    for other in sorted(imported - {unit}):
      if unit not in RANK or other not in RANK:
        missing = unit if unit not in RANK else other
        bad.append(f"{missing} is in no layer of LAYERS: place it")
      elif RANK[other] >= RANK[unit]:
        bad.append(f"{unit} (layer {RANK[unit]}) imports {other} "
                   f"(layer {RANK[other]})")
  return bad


def package_graph() -> dict[str, set[str]]:
  graph: dict[str, set[str]] = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    module = ".".join(parts)
    unit = _unit(module)
    if unit is None:  # iiet_jax/__init__.py
      continue
    graph.setdefault(unit, set()).update(
        imported_units(path.read_text(), module))
  return graph


def test_every_import_of_the_package_points_down():
  graph = package_graph()
  assert {"models", "train", "stages", "cli"} <= set(graph)
  assert violations(graph) == []


def test_every_unit_is_placed_in_a_layer():
  assert sorted(set(package_graph()) - set(RANK)) == []


@pytest.mark.parametrize("source", [
    "from iiet_jax import stages",
    "import iiet_jax.stages.pretrain",
    "from iiet_jax.stages.pretrain import Phase",
    "def f():\n  from iiet_jax.cli import commands\n",
    "from ..stages import distill",
])
def test_an_upward_import_is_caught(source):
  units = imported_units(source, "iiet_jax.train.loop")
  assert violations({"train": units}), units


def test_relative_imports_resolve_from_their_package():
  assert imported_units("from . import pretrain",
                        "iiet_jax.stages.__init__") == {"stages"}
  assert imported_units("from .. import cli",
                        "iiet_jax.stages.__init__") == {"cli"}


def test_downward_and_own_imports_pass():
  source = ("from iiet_jax.models import build_model\n"
            "from . import step\nfrom iiet_jax import checkpoint\n")
  units = imported_units(source, "iiet_jax.train.loop")
  assert units == {"models", "train", "checkpoint"}
  assert violations({"train": units}) == []


def test_tests_take_helpers_from_support_modules_not_conftest():
  """conftest.py is pytest's (set-up, fixtures); helpers live in
  support.py / training.py, which a test imports like any module."""
  bad = [f"{path.name}:{node.lineno}"
         for path in sorted(TESTS.rglob("*.py"))
         for node in ast.walk(ast.parse(path.read_text()))
         if isinstance(node, (ast.Import, ast.ImportFrom))
         and "conftest" in ([a.name for a in node.names]
                            if isinstance(node, ast.Import)
                            else [node.module or ""])]
  assert bad == []
