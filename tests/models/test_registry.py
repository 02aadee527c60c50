"""The architecture registry (iiet_jax/models/registry.py) is the one list.

No other module branches on an architecture's name: a string constant equal
to one is flagged where it is compared (==, !=, in, not in), is an element of
a literal tested for membership, or is a dict key. Docstrings, messages and
plain assignments (`first.model.arch = registry.BASE`) are not branches.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from support import small_config
from iiet_jax.models import build_model, registry
from iiet_jax.models.config import ConfigError, ModelConfig
from iiet_jax.pytorch import configuration_iiet
from iiet_jax.train import flops

ROOT = Path(__file__).resolve().parents[2]
NAMES = set(registry.NAMES)
# Where naming architectures is the point, and why.
EXEMPT = {
    "iiet_jax/models/registry.py": "the records themselves",
    # Exports ship these files standalone, without JAX or the registry;
    # test_pytorch_twin_agrees_with_the_registry checks them.
    "iiet_jax/pytorch/configuration_iiet.py": "the twin's own list",
    "iiet_jax/pytorch/modeling_iiet.py": "the twin's own list",
}
# (file, top-level name assigned): dict keys that name something else.
EXEMPT_KEYS = {
    ("configs/reproduce.py", "SYSTEMS"):
        "reproduction systems, some named after the architecture they train",
}


def _top_level_name(tree: ast.Module, node: ast.AST) -> str | None:
  for stmt in tree.body:
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
      targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
      if any(node is n for n in ast.walk(stmt)):
        return next((t.id for t in targets if isinstance(t, ast.Name)), None)
  return None


def _is_name(node) -> bool:
  return isinstance(node, ast.Constant) and node.value in NAMES


def branches_on_names(source: str, where: str = "") -> list[str]:
  """'line: snippet' for every place `source` branches on an arch name."""
  tree = ast.parse(source)
  found = []
  for node in ast.walk(tree):
    hits = []
    if isinstance(node, ast.Compare):
      for operand in [node.left, *node.comparators]:
        hits += [operand] if _is_name(operand) else []
        if isinstance(operand, (ast.Tuple, ast.List, ast.Set)):
          hits += [e for e in operand.elts if _is_name(e)]
    elif isinstance(node, ast.Dict):
      keys = [k for k in node.keys if _is_name(k)]
      if keys and (where, _top_level_name(tree, node)) not in EXEMPT_KEYS:
        hits += keys
    elif isinstance(node, ast.MatchValue) and _is_name(node.value):
      hits.append(node.value)
    found += [f"{where}:{h.lineno}: {ast.get_source_segment(source, node)}"
              for h in hits]
  return found


def _sources():
  for path in sorted([*ROOT.glob("iiet_jax/**/*.py"),
                      *ROOT.glob("configs/*.py")]):
    rel = path.relative_to(ROOT).as_posix()
    if rel not in EXEMPT:
      yield rel, path.read_text()


def test_no_module_outside_the_registry_branches_on_architecture_names():
  found = [hit for rel, text in _sources() for hit in
           branches_on_names(text, rel)]
  assert not found, ("ask iiet_jax/models/registry.py instead:\n  "
                     + "\n  ".join(found))


def test_the_rule_flags_branches_and_spares_messages():
  flagged = branches_on_names(
      'if cfg.arch == "iiet": pass\n'
      'if arch in ("pcformer", "x"): pass\n'
      'D = {"transformer": 1}\n'
      'match arch:\n  case "iiet": pass\n')
  assert len(flagged) == 4, flagged
  assert not branches_on_names(
      '"""Docs about "iiet"."""\n'
      'raise ValueError(f"model.arch={arch!r}, not \'iiet\'")\n'
      'cfg.arch = "transformer"\n'
      'run(arch="pcformer")\n')


def test_an_unknown_architecture_lists_the_known_ones():
  with pytest.raises(registry.ArchitectureError) as err:
    registry.get("nope")
  assert all(name in str(err.value) for name in registry.NAMES)
  with pytest.raises(ConfigError, match="nope.*" + ", ".join(registry.NAMES)):
    ModelConfig(arch="nope")


@pytest.mark.parametrize("arch", registry.NAMES)
def test_each_record_matches_its_model(arch):
  """Decoder class, block evaluations (SPEC.md 2-4), history parameters
  (the model's parameter paths beyond Transformer++) and export names.
  test_flops.py checks block evaluations and extra FLOPs against XLA's
  count of the compiled model."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from iiet_jax.export import names
  from iiet_jax.train.merge import leaf_paths

  record = registry.get(arch)
  cfg = small_config(arch=arch, num_layers=3, iterations=(2, 0, 1))
  model = build_model(cfg)
  tokens = jnp.zeros((1, 4), jnp.int32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), tokens)
  decoder = model.apply(abstract, tokens, method=lambda m, t: type(m.decoder))
  assert decoder is record.decoder_class()
  paths = set(leaf_paths(nn.unbox(abstract)["params"]))
  base = build_model(small_config(arch=registry.BASE, num_layers=3))
  plain = set(leaf_paths(nn.unbox(jax.eval_shape(
      base.init, jax.random.key(0), tokens))["params"]))
  added = paths - plain
  assert plain <= paths
  assert all(any(re.search(p, a) for p in record.added_params)
             for a in added), added
  assert all(any(re.search(p, a) for a in added)
             for p in record.added_params), record.added_params
  assert record.history == any("history" in a for a in added)
  # 1 + r_t for IIET, order + 1 for PCformer (pc_order 2).
  spec = {"transformer": (1, 1, 1), "iiet": (3, 1, 2), "pcformer": (3, 3, 3)}
  assert cfg.block_evaluations_per_layer() == spec[arch]
  hf = names.expected_shapes(cfg)
  extra = {k for k in hf if not k.startswith(("model.layers.", "model.embed",
                                              "model.norm", "lm_head"))}
  written = {n.format(i=i, j=j) for n, _ in record.hf_layer_params +
             record.hf_model_params for i in range(3) for j in range(4)}
  assert extra <= written and bool(extra) == bool(added)


@pytest.mark.parametrize("arch", registry.NAMES)
def test_extra_flops_are_what_the_architecture_adds(arch):
  """flops.py counts the record's FLOPs beyond head and blocks: never
  negative, and not zero for an architecture that mixes a history (one
  without, an RK4 step's stage combination say, may still add some)."""
  cfg = small_config(arch=arch, num_layers=3, iterations=(2, 0, 1))
  record = registry.get(arch)
  head = 2.0 * cfg.d_model * cfg.vocab_size
  blocks = sum(record.block_evaluations(cfg)) * flops.block_flops(cfg, 16)
  extra = flops.forward_flops_per_token(cfg, 16) - head - blocks
  assert extra == pytest.approx(record.extra_flops(cfg))
  assert extra > 0 if record.history else extra >= 0


def test_pytorch_twin_agrees_with_the_registry():
  """The shipped PyTorch files keep their own list (they cannot import the
  registry); it is the records whose class they are."""
  ours = [a for a in registry.ARCHITECTURES if a.remote_code]
  assert set(configuration_iiet.IIET_ARCHS) == {a.name for a in ours}
  for a in ours:
    assert a.hf_model_type == configuration_iiet.IIETConfig.model_type
    module, _, cls = dict(a.hf_auto_map)["AutoModelForCausalLM"].partition(".")
    assert cls == a.pytorch_class
    assert (ROOT / "iiet_jax" / "pytorch" / f"{module}.py").read_text().count(
        f"class {cls}(") == 1


def test_hf_model_types_round_trip():
  for a in registry.ARCHITECTURES:
    assert registry.from_hf(a.hf_model_type,
                            a.name if a.remote_code else None) is a
  with pytest.raises(registry.ArchitectureError, match="gpt2"):
    registry.from_hf("gpt2", None)
