"""Imports point down: no module of iiet_jax imports a higher layer (and no
test imports conftest.py).

The layers, lowest first (a unit is a top-level module or package of
iiet_jax; units on one line are peers and import none of each other):

  errors                              the UserError base every layer raises
  hostenv, storage, lock, plots,      host set-up, file storage, the workdir
  pytorch                             lock, figures, the PyTorch twin shipped
                                      in exports
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
    ("hostenv", "storage", "lock", "plots", "pytorch"),
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


# Inside data/, the same rule between its modules, lowest first.
DATA_LAYERS = (
    ("documents", "fast_tokenizer", "mixture", "sample_corpus"),
    ("shards", "tokenizer"),
    ("corpus", "pipeline", "token_shards"),
    ("sources", "prepare"),
    ("loader",),
)


def _unit(module: str, package: str = "iiet_jax") -> str | None:
  """iiet_jax.train.loop -> train; iiet_jax(.__init__) itself -> None.
  With package="iiet_jax.data": iiet_jax.data.corpus -> corpus."""
  depth = package.count(".") + 1
  parts = module.split(".")
  if (".".join(parts[:depth]) != package or len(parts) <= depth
      or parts[depth] == "__init__"):
    return None
  return parts[depth]


def imported_units(source: str, module: str,
                   package: str = "iiet_jax") -> set[str]:
  """The units of `package` that `source` imports anywhere in its body;
  `module` is its dotted path (a package's ends in `.__init__`)."""
  units = set()
  package_parts = module.split(".")
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the module's own package upward
        base = ".".join(package_parts[:len(package_parts) - node.level] +
                        ([base] if base else []))
      # `from iiet_jax import train` names a unit in the imported names.
      names = [f"{base}.{alias.name}" if base == package else base
               for alias in node.names]
    else:
      continue
    units.update(u for u in (_unit(n, package) for n in names)
                 if u is not None)
  return units


def violations(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
  """Every edge of `graph` (unit -> units it imports) that does not point
  to a strictly lower layer of `layers`."""
  rank = {unit: r for r, units in enumerate(layers) for unit in units}
  bad = []
  for unit, imported in sorted(graph.items()):
    for other in sorted(imported - {unit}):
      if unit not in rank or other not in rank:
        missing = unit if unit not in rank else other
        bad.append(f"{missing} is in no layer: place it")
      elif rank[other] >= rank[unit]:
        bad.append(f"{unit} (layer {rank[unit]}) imports {other} "
                   f"(layer {rank[other]})")
  return bad


def package_graph(package: str = "iiet_jax") -> dict[str, set[str]]:
  graph: dict[str, set[str]] = {}
  folder = PACKAGE.parent.joinpath(*package.split("."))
  for path in sorted(folder.rglob("*.py")):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    module = ".".join(parts)
    unit = _unit(module, package)
    if unit is None:  # the package's __init__.py
      continue
    graph.setdefault(unit, set()).update(
        imported_units(path.read_text(), module, package))
  return graph


def test_every_import_of_the_package_points_down():
  graph = package_graph()
  assert {"models", "train", "stages", "cli"} <= set(graph)
  assert violations(graph) == []


def test_every_unit_is_placed_in_a_layer():
  assert sorted(set(package_graph()) - set(RANK)) == []


def test_the_modules_of_data_import_down_too():
  graph = package_graph("iiet_jax.data")
  assert {"tokenizer", "fast_tokenizer", "loader"} <= set(graph)
  assert violations(graph, DATA_LAYERS) == []
  placed = {m for units in DATA_LAYERS for m in units}
  assert sorted(set(graph) - placed) == []


def test_readers_of_a_saved_run_need_no_training_stack():
  """A saved run opens as a model (runs.py): what reads one never imports
  the optimizer, the train step or the corpus."""
  training = {"optimizer", "step", "build", "loop", "state"}
  corpus = {"corpus", "sources", "loader", "pipeline"}
  for package, forbidden in (("iiet_jax.train", training),
                             ("iiet_jax.data", corpus)):
    for reader in ("runs.py", "export", "iiad/influence.py"):
      paths = ([PACKAGE / reader] if reader.endswith(".py")
               else sorted((PACKAGE / reader).rglob("*.py")))
      for path in paths:
        module = ".".join(path.relative_to(PACKAGE.parent)
                          .with_suffix("").parts)
        used = imported_units(path.read_text(), module, package)
        assert not used & forbidden, (path.name, used & forbidden)


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
