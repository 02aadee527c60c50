"""The history stack's training form: each past state read once per layer.

Layer t of IIET / PCformer reads two mixes of all earlier states,
sum_{j<t} W[t, j] S_j and sum_{j<t} Wc[t, j] S_j (SPEC.md sections 3-4). The
stack keeps the states S_0..S_L in one buffer [L+1, B, T, D] in the compute
dtype, and layer t reads both mixes in one pass over it (`read_mixes`, a
[2, L+1] x [L+1, BTD] contraction), then writes its own row. That is the
least a learned lower-triangular W allows: every past state read once per
layer, nothing rewritten.

Plain reverse mode through that scan would save the whole buffer at every
layer (memory quadratic in L), because d/dW[t, j] needs every S_j. But rows
are written once, so the final buffer holds every state any layer read. The
custom VJP below saves only the final buffer and each layer's input h, and
runs the backward as a reverse scan: it re-reads the mixes from the final
buffer, pulls the layer's cotangents back through the layer core, adds the
transposed mix W[t, :]^T g_t into a float32 cotangent buffer for the earlier
states, and reads dW[t, :] = <g_t, S_j> off the final buffer. Activation
memory is linear in L.

The layer core runs under `jax.vjp` (wrapped in `jax.checkpoint` with the
configured policy) inside the forward scan; its residuals leave the scan as
stacked outputs, except those that are the core's own inputs (the layer's
parameters, h, the mixes), which are not copied but handed back in the
backward. With the "full" policy nothing but inputs is kept, so the core is
recomputed once in the backward, as `nn.remat` does.

Layers can run in several consecutive scans ("runs"), each with its own
static core; E-IIET uses that to give every run of layers with equal r_t its
own iteration count instead of masking max(r_t) iterations everywhere.

Measured against the previous layout (two float32 accumulators [L, B, T, D]
that every layer read and rewrote whole), in the same session:
- 55M train step, batch 4 x 256, float32, no remat, 2-core XLA:CPU, median
  of 3 interleaved steps: IIET 13.84 s -> 10.01 s, PCformer 9.48 s -> 6.40 s,
  Transformer++ (unchanged) 2.44 s / 2.49 s.
- Temporaries of the gradient at 24 layers (bench/layer_stack.py, d=256,
  full remat): 203 MiB -> 117 MiB; growth per layer 4.0 -> 1.5 MiB.
- v5e-16 AOT, 256 x 2048, FSDP, full remat, 4 micro-batches: IIET 340m
  12.17 -> 7.51 GiB total per chip, 740m 18.35 (did not fit) -> 11.79 GiB.

The state cotangents are kept in the compute dtype (bfloat16 in training),
as plain reverse mode keeps those of a carried buffer, and each layer adds
its part in float32. IIET 740m temporaries on v5e-16 (splash attention, same
settings): 7.28 -> 6.69 GiB. Tried and dropped, measured at the same point:
- the reads as weighted sums over the leading axis instead of dots (to
  avoid TPU's padded [L+1]-minor layout of the buffer, 768 instead of 600
  MiB, and its copy for the backward): XLA then keeps float32 copies of the
  whole buffer instead, 6.69 GiB all the same; as an unrolled sum of static
  row slices, no padding and no copy in the buffer dump, yet 7.24 GiB;
- the zero cotangents behind an optimization barrier (XLA sinks them into
  the loop as a per-layer select, which double-buffers them): the copy goes,
  yet temporaries rise, 7.28 -> 8.08 GiB with float32 cotangents and
  5.84 -> 6.11 GiB with these under per_evaluation;
- dW as the forward's contraction pattern on TPU (via
  `lax.platform_dependent`): another layout copy, 7.43 GiB.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

# core(params_i, xs_i, shared, h_BTD, mixes_2BTD, positions, segment_ids)
#   -> (h_next_BTD, s_BTD)
Core = Callable[..., tuple[Array, Array]]


def read_mixes(mix_2J: Array, states_JBTD: Array) -> Array:
  """[sum_j W[t, j] S_j, sum_j Wc[t, j] S_j], float32 [2, B, T, D].

  `mix_2J` holds row t of W and Wc; rows from t on of the buffer are still
  zero when layer t reads it."""
  return jnp.einsum("kj,jbtd->kbtd", mix_2J.astype(jnp.float32),
                    states_JBTD.astype(jnp.float32))


def _split(xs):
  """(float leaves, other leaves, how to merge them back) of a layer's xs."""
  leaves, treedef = jax.tree.flatten(xs)
  is_float = [jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in leaves]
  floats = [x for x, f in zip(leaves, is_float) if f]
  others = [x for x, f in zip(leaves, is_float) if not f]
  return floats, others, (treedef, tuple(is_float))


def _merge(layout, floats, others):
  treedef, is_float = layout
  floats, others = iter(floats), iter(others)
  return jax.tree.unflatten(
      treedef, [next(floats) if f else next(others) for f in is_float])


class _Residuals:
  """How one run's core residuals are kept: by reference to a core input or
  as a stacked scan output. Filled while the forward scan body is traced,
  read when the backward is traced; a pytree node without leaves, so it
  travels from the forward to the backward as static data."""

  def __init__(self):
    self.treedef = None
    self.slots: list[tuple[str, int]] = []

  def split(self, vjp_fn, inputs: Sequence[Array]) -> list[Array]:
    leaves, self.treedef = jax.tree.flatten(vjp_fn)
    stacked, self.slots = [], []
    for leaf in leaves:
      hit = next((k for k, x in enumerate(inputs) if leaf is x), None)
      if hit is None:
        self.slots.append(("stacked", len(stacked)))
        stacked.append(leaf)
      else:
        self.slots.append(("input", hit))
    return stacked

  def rebuild(self, stacked, inputs):
    leaves = [stacked[k] if kind == "stacked" else inputs[k]
              for kind, k in self.slots]
    return jax.tree.unflatten(self.treedef, leaves)


jax.tree_util.register_pytree_node(_Residuals, lambda r: ((), r),
                                   lambda r, _: r)


def history_scan(runs: Sequence[tuple[int, int, Core]], policy,
                 params_L, mix_L2J, xs_L, shared, h0_BTD, positions_BT,
                 segment_ids_BT) -> Array:
  """h_L of the history stack.

  `runs` are (first layer, end, core) covering layers 0..L-1 in order;
  `mix_L2J` [L, 2, L+1] holds rows t = 1..L of W and Wc (entries from column
  t on multiply states not yet written, so they have no effect); `xs_L` the other per-layer inputs of the core (leading L axis);
  `policy` a `jax.checkpoint` policy, or None to keep every residual."""
  return _history_scan(tuple(runs), policy, params_L, mix_L2J, xs_L, shared,
                       h0_BTD, positions_BT, segment_ids_BT)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _history_scan(runs, policy, params_L, mix_L2J, xs_L, shared, h0_BTD,
                  positions_BT, segment_ids_BT):
  return _forward(runs, policy, params_L, mix_L2J, xs_L, shared, h0_BTD,
                  positions_BT, segment_ids_BT, keep=False)[0]


def _slice(tree, a, b):
  return jax.tree.map(lambda x: x[a:b], tree)


def _core_fn(core, policy, xs_others, xs_layout, positions_BT,
             segment_ids_BT):
  """The layer core as a function of its differentiable inputs."""

  def fn(p, xs_float, shared, h_BTD, mixes_2BTD):
    xs = _merge(xs_layout, xs_float, xs_others)
    return core(p, xs, shared, h_BTD, mixes_2BTD, positions_BT,
                segment_ids_BT)

  return fn if policy is None else jax.checkpoint(fn, policy=policy)


def _inputs(p, xs_float, shared, h_BTD, mixes_2BTD, xs_others, positions_BT,
            segment_ids_BT) -> list[Array]:
  """Every array the core may keep as a residual without a copy."""
  return (jax.tree.leaves((p, xs_float, shared)) + [h_BTD, mixes_2BTD]
          + list(xs_others)
          + [x for x in (positions_BT, segment_ids_BT) if x is not None])


def _forward(runs, policy, params_L, mix_L2J, xs_L, shared, h0_BTD,
             positions_BT, segment_ids_BT, keep: bool):
  L = mix_L2J.shape[0]
  states = jnp.zeros((L + 1,) + h0_BTD.shape, h0_BTD.dtype).at[0].set(h0_BTD)
  h_BTD = h0_BTD
  kept = []
  for start, end, core in runs:
    residuals = _Residuals()

    def body(carry, inp, core=core, residuals=residuals):
      h_BTD, states = carry
      p, mix_2J, xs, i = inp
      xs_float, xs_others, xs_layout = _split(xs)
      mixes = read_mixes(mix_2J, states)
      fn = _core_fn(core, policy, xs_others, xs_layout, positions_BT,
                    segment_ids_BT)
      stacked = []
      if keep:
        (h_next, s_BTD), vjp_fn = jax.vjp(fn, p, xs_float, shared, h_BTD,
                                          mixes)
        stacked = residuals.split(vjp_fn, _inputs(
            p, xs_float, shared, h_BTD, mixes, xs_others, positions_BT,
            segment_ids_BT))
      else:
        h_next, s_BTD = fn(p, xs_float, shared, h_BTD, mixes)
      states = jax.lax.dynamic_update_index_in_dim(
          states, s_BTD.astype(states.dtype), i + 1, 0)
      return (h_next.astype(h_BTD.dtype), states), (h_BTD, stacked)

    (h_BTD, states), (h_in, stacked) = jax.lax.scan(
        body, (h_BTD, states),
        (_slice(params_L, start, end), mix_L2J[start:end],
         _slice(xs_L, start, end), jnp.arange(start, end)))
    kept.append((residuals, h_in, stacked))
  return h_BTD, states, kept


def _history_scan_fwd(runs, policy, params_L, mix_L2J, xs_L, shared, h0_BTD,
                      positions_BT, segment_ids_BT):
  h_BTD, states, kept = _forward(runs, policy, params_L, mix_L2J, xs_L,
                                 shared, h0_BTD, positions_BT, segment_ids_BT,
                                 keep=True)
  return h_BTD, (params_L, mix_L2J, xs_L, shared, positions_BT,
                 segment_ids_BT, states, kept)


def _history_scan_bwd(runs, policy, residuals, g_h_BTD):
  (params_L, mix_L2J, xs_L, shared, positions_BT, segment_ids_BT, states,
   kept) = residuals
  # The state cotangents are kept in the buffer's (compute) dtype, as plain
  # reverse mode keeps a carry's; each layer adds its part in float32.
  g_states = jnp.zeros(states.shape, states.dtype)
  g_shared = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), shared)
  g_params, g_mix, g_xs = [], [], []
  for (start, end, core), (layout, h_in, stacked) in reversed(
      list(zip(runs, kept))):

    def body(carry, inp, core=core, layout=layout):
      g_h, g_states, g_shared = carry
      p, mix_2J, xs, i, h_BTD, stacked_i = inp
      xs_float, xs_others, _ = _split(xs)
      mixes = read_mixes(mix_2J, states)
      vjp_fn = layout.rebuild(stacked_i, _inputs(
          p, xs_float, shared, h_BTD, mixes, xs_others, positions_BT,
          segment_ids_BT))
      g_s = jax.lax.dynamic_index_in_dim(g_states, i + 1, 0, keepdims=False)
      g_p, g_xs_float, g_sh, g_h_in, g_mixes = vjp_fn(
          (g_h, g_s.astype(states.dtype)))
      g_mixes = g_mixes.astype(jnp.float32)
      # The transposed mix: cotangents of the earlier states this layer
      # read, as two scaled adds (one fused pass; XLA:CPU ran the same
      # contraction as a dot 4x slower at 55M).
      mix32 = mix_2J.astype(jnp.float32)
      g_states = (g_states.astype(jnp.float32)
                  + sum(mix32[k][:, None, None, None] * g_mixes[k]
                        for k in range(2))).astype(states.dtype)
      # dW[t, j] = <g_t, S_j>, one matrix-vector product per mix (written as
      # a [2, N] x [N, J] dot it ran 30x slower on XLA:CPU at 55M). Rows
      # j >= t of the final buffer were still zero when layer t read them:
      # their entries get no cotangent.
      flat_JN = states.reshape(states.shape[0], -1).astype(jnp.float32)
      g_mix_2J = jnp.stack([flat_JN @ g_mixes[k].reshape(-1)
                            for k in range(2)])
      g_mix_2J = jnp.where(jnp.arange(states.shape[0]) <= i, g_mix_2J, 0.0)
      g_shared = jax.tree.map(lambda a, b: a + b.astype(jnp.float32),
                              g_shared, g_sh)
      return (g_h_in, g_states, g_shared), (
          g_p, g_mix_2J.astype(mix_2J.dtype), g_xs_float)

    (g_h_BTD, g_states, g_shared), (g_p, g_m, g_xs_float) = jax.lax.scan(
        body, (g_h_BTD, g_states, g_shared),
        (_slice(params_L, start, end), mix_L2J[start:end],
         _slice(xs_L, start, end), jnp.arange(start, end), h_in, stacked),
        reverse=True)
    _, xs_others, xs_layout = _split(_slice(xs_L, start, end))
    g_params.append(g_p)
    g_mix.append(g_m)
    g_xs.append(_merge(xs_layout, g_xs_float, [None] * len(xs_others)))
  concat = lambda *runs_: jnp.concatenate(runs_[::-1])
  g_params = jax.tree.map(concat, *g_params)
  g_mix = concat(*g_mix)
  g_xs = jax.tree.map(concat, *g_xs)
  g_h0 = (g_h_BTD.astype(jnp.float32)
          + g_states[0].astype(jnp.float32)).astype(g_h_BTD.dtype)
  g_shared = jax.tree.map(lambda g, x: g.astype(x.dtype), g_shared, shared)
  return g_params, g_mix, g_xs, g_shared, g_h0, None, None


_history_scan.defvjp(_history_scan_fwd, _history_scan_bwd)
