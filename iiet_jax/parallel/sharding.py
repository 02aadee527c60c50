"""Every sharding decision: the logical-axis rules and what follows from them.

Modules name their parameter axes and activation axes (`activation_*`). A
rules table maps each logical name to mesh axes (`data`, `fsdp`, `tensor`) or
to None (replicated). `PRESETS` are the tables; `config_block` puts the whole
table of one into the config (`config.sharding.rules`), where every entry can
be overridden: `--config.sharding.rules.mlp_down=tensor`. Nothing else in the
code base decides how an array is laid out.

Parameter names: `embed` (the width D of every weight matrix), `kv` (the
head size H), `layers`, `norm`, and one name per weight for its other axis,
so that moving one weight is one override: `heads_query`, `heads_key`,
`heads_value`, `heads_out` (the attention heads), `mlp_gate`, `mlp_up`,
`mlp_down` (the MLP width F), `vocab_embedding`, `vocab_head`.

Key / value heads (grouped-query attention) follow the query heads under
tensor parallelism: split over `tensor` too, so each shard holds the kv heads
its query heads read and attention needs no communication. That needs
num_kv_heads to be a multiple of the `tensor` size; with fewer kv heads (e.g.
one, MQA) set `heads_key`, `heads_value` and `activation_kv_heads` to none:
the small key / value projections are then replicated over `tensor`, as
Megatron-LM does, and every shard computes all kv heads.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from iiet_jax.parallel.mesh import MESH_AXES, axis_size, make_mesh
from iiet_jax.errors import UserError

Rules = tuple[tuple[str, Any], ...]

BATCH = ("data", "fsdp")
HEADS = ("heads_query", "heads_key", "heads_value", "heads_out")
MLP = ("mlp_gate", "mlp_up", "mlp_down")
VOCAB = ("vocab_embedding", "vocab_head")
PARAM_NAMES = ("embed", *HEADS, "kv", *MLP, *VOCAB, "layers", "norm")
ACTIVATION_NAMES = (
    "activation_batch", "activation_length", "activation_embed",
    "activation_heads", "activation_kv_heads", "activation_kv",
    "activation_mlp", "activation_vocab")

_DP = {**{name: None for name in PARAM_NAMES + ACTIVATION_NAMES},
       "activation_batch": BATCH}
_TENSOR = HEADS + MLP + VOCAB + (
    "activation_heads", "activation_kv_heads", "activation_mlp",
    "activation_vocab")

PRESETS: dict[str, dict[str, Any]] = {
    # Pure data parallel: parameters and optimizer state on every device.
    "dp": _DP,
    # ZeRO-3 style: every weight matrix split over `fsdp` along `embed`,
    # gathered for use; batch over `data` x `fsdp`.
    "fsdp": {**_DP, "embed": "fsdp"},
    # FSDP plus Megatron-style tensor parallelism over `tensor`: query and kv
    # heads, MLP width and vocabulary split, activations sharded to match.
    "fsdp_tp": {**_DP, "embed": "fsdp",
                **{name: "tensor" for name in _TENSOR}},
}
LOGICAL_NAMES = tuple(PRESETS["dp"])


class ShardingError(UserError, ValueError):
  """A rules table or array shape that cannot be laid out on the mesh."""

  kind = "Config"


def rule_text(axes) -> str:
  """A rule as the config holds it: "none", "fsdp" or "fsdp,tensor"."""
  if axes is None:
    return "none"
  return axes if isinstance(axes, str) else ",".join(axes)


def _preset_rule(preset: str, name: str) -> str:
  # An unknown preset reads as "none" here; make_rules reports it.
  return rule_text(PRESETS.get(preset, {}).get(name))


def config_block(preset: str) -> ml_collections.ConfigDict:
  """`config.sharding`: `preset` and the whole rules table it implies.

  Each rule is a reference to the preset (ml_collections ops, pinned in
  pyproject.toml), so setting `preset` later, in the config file or on the
  command line, re-derives every rule not set explicitly; a rule set
  explicitly keeps its value whatever the preset, in either order."""
  ref = ml_collections.FieldReference(preset)
  # pylint: disable-next=protected-access
  rules = {name: ref._apply_op(_preset_rule, name) for name in LOGICAL_NAMES}
  return ml_collections.ConfigDict({"preset": ref, "rules": rules})


def make_rules(preset: str, rules: Mapping[str, Any] | None = None) -> Rules:
  """The rules table: `rules` (the config's table), names it lacks from
  `preset` (configs saved before every name was in the config)."""
  if preset not in PRESETS:
    raise ShardingError(f"sharding.preset={preset!r} is unknown; choose one "
                        f"of {', '.join(PRESETS)}.")
  table = dict(PRESETS[preset])
  for name, axes in (rules or {}).items():
    if name not in table:
      raise ShardingError(
          f"sharding.rules.{name} names a logical axis no array uses; the "
          f"logical names are {', '.join(table)}.")
    table[name] = parse_rule(name, axes)
  return tuple(table.items())


def parse_rule(name: str, axes):
  """"none" / "" / None -> None; "fsdp" -> "fsdp"; "fsdp,tensor" (or a
  tuple) -> ("fsdp", "tensor")."""
  given = axes
  if isinstance(axes, str):
    axes = [a.strip(" '\"") for a in axes.strip(" ()[]").split(",")]
    axes = [a for a in axes if a.lower() not in ("", "none")]
  axes = tuple(axes or ())
  bad = [a for a in axes if a not in MESH_AXES]
  if bad:
    raise ShardingError(
        f"sharding.rules.{name}={given!r} names {bad}, not a mesh axis; "
        f"give mesh axes out of {', '.join(MESH_AXES)}, comma-separated "
        f"(e.g. --config.sharding.rules.{name}=fsdp,tensor), or none to "
        f"replicate it.")
  if not axes:
    return None
  return axes[0] if len(axes) == 1 else axes


def check_mesh_used(mesh: Mesh, rules: Rules) -> None:
  """A mesh axis of size > 1 that no rule uses would silently replicate work."""
  used = set()
  for _, axes in rules:
    if axes is not None:
      used.update((axes,) if isinstance(axes, str) else axes)
  idle = [a for a in MESH_AXES if mesh.shape[a] > 1 and a not in used]
  if idle:
    raise ShardingError(
        f"Mesh axis {idle} has size {[mesh.shape[a] for a in idle]} but no "
        f"sharding rule uses it; pick a preset that does (e.g. fsdp_tp for "
        f"`tensor`) or set that axis to 1.")


def from_config(config, devices=None) -> tuple[Mesh, Rules]:
  """The mesh (of `devices`, default all) and rules a run config names."""
  mesh = make_mesh(config.mesh, config.mesh.get("slices", 1), devices)
  rules = make_rules(config.sharding.preset,
                     dict(config.sharding.get("rules", {}) or {}))
  check_mesh_used(mesh, rules)
  return mesh, rules


def logical_specs(abstract_tree) -> Any:
  """PartitionSpecs of logical names for a tree holding nn.Partitioned boxes."""
  return nn.get_partition_spec(abstract_tree)


def mesh_shardings(logical_spec_tree, mesh: Mesh, rules: Rules) -> Any:
  return nn.logical_to_mesh_sharding(logical_spec_tree, mesh, list(rules))


def check_divisible(abstract_tree, shardings, what: str) -> None:
  """Every sharded dimension divides evenly by the mesh axes it is split on."""
  leaves = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
  shard_leaves = jax.tree.leaves(
      shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, leaf), sharding in zip(leaves, shard_leaves):
    for dim, axes in zip(leaf.shape, sharding.spec):
      n = axis_size(sharding.mesh, axes)
      if dim % n:
        name = jax.tree_util.keystr(path)
        raise ShardingError(
            f"{what}{name} has shape {leaf.shape}; its dimension {dim} is "
            f"split over mesh axes {axes} of size {n}, which does not divide "
            f"it. Change the mesh or the sharding rules for that axis.")


def abstract_shardings(boxed, mesh: Mesh, rules: Rules, what: str):
  """(unboxed abstract tree, its NamedShardings) of a traced tree holding
  logically partitioned boxes, checked for divisibility."""
  shardings = mesh_shardings(logical_specs(boxed), mesh, rules)
  abstract = nn.unbox(boxed)
  check_divisible(abstract, shardings, what)
  return abstract, shardings


def placed(abstract, shardings) -> Any:
  """`abstract` as ShapeDtypeStructs on `shardings`: the target of a
  restore or the input of an ahead-of-time lowering."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, shardings)


def placed_params(model: nn.Module, mesh: Mesh, rules: Rules,
                  seq_len: int = 8) -> Any:
  """`model`'s parameters, traced abstractly (nothing is allocated), placed
  on the shardings the rules give them: what a checkpoint restores onto."""
  import jax.numpy as jnp
  boxed = jax.eval_shape(
      lambda rng: model.init(rng, jnp.zeros((1, seq_len), jnp.int32)),
      jax.random.key(0))["params"]
  return placed(*abstract_shardings(boxed, mesh, rules, "params"))


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int = 2) -> NamedSharding:
  """Sharding of a [batch, length, ...] input array."""
  names = ("activation_batch", "activation_length") + (None,) * (ndim - 2)
  spec = nn.logical_to_mesh_axes(names, list(rules))
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def axis_rules(rules: Rules):
  """Context manager making the rules visible to activation constraints."""
  return nn.logical_axis_rules(list(rules))


