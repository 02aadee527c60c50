"""Every sharding decision: the logical-axis rules and what follows from them.

Modules name their parameter axes (`embed`, `heads`, `kv_heads`, `kv`, `mlp`,
`vocab`, `layers`, `norm`) and activation axes (`activation_*`). A rules table maps each
logical name to mesh axes (`data`, `fsdp`, `tensor`) or to None (replicated).
`config.sharding.preset` picks one of `PRESETS`; `config.sharding.rules`, when
given, replaces individual entries. Nothing else in the code base decides how
an array is laid out.

Key / value heads (`kv_heads`, grouped-query attention) follow the query
heads under tensor parallelism: split over `tensor` too, so each shard holds
the kv heads its query heads read and attention needs no communication. That
needs num_kv_heads to be a multiple of the `tensor` size; with fewer kv heads
(e.g. one, MQA) set `sharding.rules` `kv_heads` and `activation_kv_heads` to
None: the small key / value projections are then replicated over `tensor`,
as Megatron-LM does, and every shard computes all kv heads.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from iiet_jax.parallel.mesh import MESH_AXES, axis_size
from iiet_jax.errors import UserError

Rules = tuple[tuple[str, Any], ...]

BATCH = ("data", "fsdp")
_ACTIVATIONS_DP = {
    "activation_batch": BATCH,
    "activation_length": None,
    "activation_embed": None,
    "activation_heads": None,
    "activation_kv_heads": None,
    "activation_kv": None,
    "activation_mlp": None,
    "activation_vocab": None,
}
_PARAMS_REPLICATED = {name: None for name in
                      ("embed", "heads", "kv_heads", "kv", "mlp", "vocab",
                       "layers", "norm")}

PRESETS: dict[str, dict[str, Any]] = {
    # Pure data parallel: parameters and optimizer state on every device.
    "dp": {**_PARAMS_REPLICATED, **_ACTIVATIONS_DP},
    # ZeRO-3 style: every weight matrix split over `fsdp` along `embed`,
    # gathered for use; batch over `data` x `fsdp`.
    "fsdp": {**_PARAMS_REPLICATED, **_ACTIVATIONS_DP, "embed": "fsdp"},
    # FSDP plus Megatron-style tensor parallelism over `tensor`: query and kv
    # heads, MLP width and vocabulary split, activations sharded to match.
    "fsdp_tp": {**_PARAMS_REPLICATED, **_ACTIVATIONS_DP, "embed": "fsdp",
                "heads": "tensor", "kv_heads": "tensor", "mlp": "tensor",
                "vocab": "tensor", "activation_heads": "tensor",
                "activation_kv_heads": "tensor", "activation_mlp": "tensor",
                "activation_vocab": "tensor"},
}


class ShardingError(UserError, ValueError):
  """A rules table or array shape that cannot be laid out on the mesh."""

  kind = "Config"


def make_rules(preset: str, overrides: Mapping[str, Any] | None = None
               ) -> Rules:
  """The rules table: a preset with optional per-name overrides."""
  if preset not in PRESETS:
    raise ShardingError(f"sharding.preset={preset!r} is unknown; choose one "
                        f"of {', '.join(PRESETS)}.")
  table = dict(PRESETS[preset])
  for name, axes in (overrides or {}).items():
    if name not in table:
      raise ShardingError(f"sharding.rules names {name!r}, which no array "
                          f"uses; logical names: {', '.join(table)}.")
    table[name] = _normalise(name, axes)
  return tuple(table.items())


def _normalise(name: str, axes):
  if axes in (None, "", (), []):
    return None
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  bad = [a for a in axes if a not in MESH_AXES]
  if bad:
    raise ShardingError(f"sharding.rules[{name!r}] uses {bad}; mesh axes are "
                        f"{', '.join(MESH_AXES)}.")
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


