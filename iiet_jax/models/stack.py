"""The layer stack shared by every architecture: remat, scan or unroll, history.

An architecture supplies one *layer core*, a module called as

    core(h_BTD, prefix, layer_xs, shared, positions_BT, segment_ids_BT, cache)
        -> (h_next_BTD, S_BTD or None, new_kv)

and `LayerStack` runs it L times: `nn.scan` over layers (parameters stacked on
a leading `layers` axis) or a Python loop (`scan_layers=False`, same math,
parameters `layers_0..layers_{L-1}`), with the core wrapped in `nn.remat` under
the configured policy.

Decoding hands every layer the KV cache [L, E, B, S, N, H] (one slot per
block evaluation, E the most evaluations any layer makes) as a `LayerCache`
that reads its own slots in place; each core returns the new tokens' keys and
values [E, B, T, N, H], stacked over layers (scan ys) for the caller to write
once. Passing the cache as scan xs/ys instead copies all of it several times
per token, which measured 3x slower per decode step at 1024 positions. The
core is not rematerialised when decoding; training passes no cache and runs
as before.

For IIET and PCformer the stack also keeps the ODE history (SPEC.md sections
3-4): a buffer [L+1, B, T, D] of the states S_0..S_L in the compute dtype.
Layer t reads sum_{j<t} W[t, j] S_j and sum_{j<t} Wc[t, j] S_j in one pass
over it and writes its own row once. When a scanned history stack is
differentiated (training, `_lean`), it runs as `history_scan`
(history_scan.py): a custom VJP that keeps only the final buffer and each
layer's input, so activation memory grows linearly in L, and that runs runs of
layers with equal E-IIET r_t under their own static iteration count.
Initialisation, decoding and reading intermediates take the Flax scan below
with the same buffer.

Measured choice of scan vs unroll (`python bench/layer_stack.py`, IIET r=3,
d=256, B=2, T=256, float32, full remat, gradient of the loss, XLA CPU;
docs/layer_stack.md):

    layers   scan: compile s   temp MiB     unroll: compile s   temp MiB
       4            4.3           87.3                7.9          301.5
       8            4.4           93.3               13.7          610.9
      16            4.5          105.3               32.2         1282.2
      24            6.1          117.3               66.2         2011.7

Scanning is the default: compile time stays nearly flat in L (unrolled grows
about linearly, 11x slower at L=24), and temporary memory grows by 1.5 MiB
(three [B, T, D] float32 states) per layer, while the unrolled stack keeps
17x more alive. `scan_layers=False` stays for debugging and per-layer
inspection. tests/models/test_memory.py guards the linear growth.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from iiet_jax.models.config import ModelConfig
from iiet_jax.models.history_scan import history_scan, read_mixes
from iiet_jax.models.layers import KVCache, LayerCache, kv_stack

Array = jax.Array


def remat_policy(cfg: ModelConfig):
  """The `jax.checkpoint` policy named by `model.remat_policy`."""
  policies = jax.checkpoint_policies
  if cfg.remat_policy in ("full", "per_evaluation"):
    # per_evaluation: the layer keeps only its inputs, as under "full"; inside
    # it each block evaluation is rematerialised on its own
    # (HistoryLayer.evaluate).
    return policies.nothing_saveable
  if cfg.remat_policy == "save_dots":
    return policies.dots_with_no_batch_dims_saveable
  if cfg.remat_policy == "save_names":
    return policies.save_only_these_names(*cfg.remat_save_names)
  raise ValueError(f"remat_policy {cfg.remat_policy!r} has no jax policy")


class _Step(nn.Module):
  """One layer of the stack: history read, rematerialised core, history push."""
  config: ModelConfig
  core: Any  # a module class with the core signature above
  history: bool
  index: int | None  # static layer index when unrolled, None under scan

  @nn.compact
  def __call__(self, carry, layer_xs, shared, positions_BT, segment_ids_BT,
               kv):
    cfg = self.config
    core_cls = self.core
    if cfg.remat_policy != "none" and kv is None:
      core_cls = nn.remat(core_cls, policy=remat_policy(cfg),
                          prevent_cse=not cfg.scan_layers)
    core = core_cls(cfg, self.index, name="layer")
    i = layer_xs["layer"] if self.index is None else self.index
    cache = None if kv is None else LayerCache(kv, i)
    if not self.history:
      h_BTD, _, new_kv = core(carry, None, layer_xs, shared, positions_BT,
                              segment_ids_BT, cache)
      return h_BTD, new_kv

    h_BTD, states_JBTD = carry
    mixes_2BTD = read_mixes(layer_xs["mix"], states_JBTD)
    h_BTD, s_BTD, new_kv = core(h_BTD, mixes_2BTD, layer_xs, shared,
                                positions_BT, segment_ids_BT, cache)
    states_JBTD = jax.lax.dynamic_update_index_in_dim(
        states_JBTD, s_BTD.astype(states_JBTD.dtype), i + 1, 0)
    return (h_BTD, states_JBTD), new_kv


class LayerStack(nn.Module):
  """Runs `core` for every layer; owns remat and scan for all architectures.

  Returns (carry, new_kv): the new tokens' keys and values
  [L, E, B, T, N, H] when decoding with the cache `kv`, else None.
  """
  config: ModelConfig
  core: Any
  history: bool = False

  @nn.compact
  def __call__(self, carry, layer_xs, shared, positions_BT, segment_ids_BT,
               kv: KVCache | None = None):
    cfg = self.config
    L = cfg.num_layers
    layer_xs = dict(layer_xs, layer=jnp.arange(L))
    if self.history and self._lean(kv):
      return self._lean_history(carry, layer_xs, shared, positions_BT,
                                segment_ids_BT), None
    if cfg.scan_layers:
      scanned = nn.scan(
          _Step,
          variable_axes={"params": 0, "intermediates": 0},
          split_rngs={"params": True},
          in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
          length=L,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )
      return scanned(cfg, self.core, self.history, None, name="layers")(
          carry, layer_xs, shared, positions_BT, segment_ids_BT, kv)
    new_kvs = []
    for i in range(L):
      xs_i = jax.tree.map(lambda a, i=i: a[i], layer_xs)
      carry, new_kv = _Step(cfg, self.core, self.history, i,
                            name=f"layers_{i}")(
          carry, xs_i, shared, positions_BT, segment_ids_BT, kv)
      new_kvs.append(new_kv)
    return carry, kv_stack(new_kvs)


  def _lean(self, kv) -> bool:
    """Training and evaluation of a scanned history stack take the lean
    custom-VJP scan; initialisation, decoding and reading intermediates
    take the Flax scan, whose autodiff would save the buffer per layer."""
    return (self.config.scan_layers and kv is None
            and not self.is_initializing()
            and not self.is_mutable_collection("intermediates"))

  def _lean_history(self, carry, layer_xs, shared, positions_BT,
                    segment_ids_BT):
    cfg = self.config
    h0_BTD, _ = carry
    params_L = self.variables["params"]["layers"]["layer"]
    xs = {k: v for k, v in layer_xs.items() if k != "mix"}

    def make_core(kwargs):
      module = self.core(cfg, None, parent=None, **kwargs)

      def core(p, xs_i, shared, h_BTD, mixes_2BTD, positions_BT,
               segment_ids_BT):
        h_BTD, s_BTD, _ = module.apply({"params": p}, h_BTD, mixes_2BTD,
                                       xs_i, shared, positions_BT,
                                       segment_ids_BT, None)
        return h_BTD, s_BTD

      return core

    runs = [(a, b, make_core(kwargs)) for a, b, kwargs in self.core.runs(cfg)]
    policy = None if cfg.remat_policy == "none" else remat_policy(cfg)
    h_BTD = history_scan(runs, policy, params_L, layer_xs["mix"], xs, shared,
                         h0_BTD, positions_BT, segment_ids_BT)
    return h_BTD, None


def unstack_layers(params, num_layers: int):
  """Scanned parameters (`stack/layers`, leading L axis) -> the unrolled
  layout (`stack/layers_{i}`); everything else is shared, not copied."""
  decoder = dict(params["decoder"])
  stack = dict(decoder["stack"])
  layers = stack.pop("layers")
  for i in range(num_layers):
    stack[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], layers)
  decoder["stack"] = stack
  return {**params, "decoder": decoder}
