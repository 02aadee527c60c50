"""The learned multistep history shared by IIET and PCformer (SPEC.md section 3).

`W` mixes the history into the input of every implicit iteration, `Wc` into
the layer output; both are (L+1) x (L+1) and only their lower triangle is read.
`History` owns the two matrices and hands the layer stack what it needs: the
per-layer slices (diagonal weights and the rows that mix earlier states) and
the state buffer started from S_0 = Embed(x). `HistoryLayer` is the part of a
layer core that IIET and PCformer share: B_t, LNp_t, LNc_t, the corrector step
and the output mix; `history_decoder` runs such a core over all layers.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from iiet_jax.models.config import ModelConfig
from iiet_jax.models.layers import DecoderBlock, LayerNorm, param
from iiet_jax.models.stack import LayerStack

Array = jax.Array



def history_init(key, shape, dtype=jnp.float32) -> Array:
  """Row t holds 1/(t+1) in columns 0..t: a plain average of the history."""
  del key
  n = shape[0]
  rows = jnp.arange(n)[:, None]
  cols = jnp.arange(n)[None, :]
  return jnp.where(cols <= rows, 1.0 / (rows + 1.0), 0.0).astype(dtype)


class History(nn.Module):
  """W, Wc and the per-layer views of them that the layer stack reads."""
  config: ModelConfig

  @nn.compact
  def __call__(self, s0_BTD: Array):
    """Returns (per-layer slices with a leading L axis, the state buffer
    [L+1, B, T, D] holding S_0 = Embed(x) in row 0)."""
    cfg = self.config
    L = cfg.num_layers
    w = param(self, "weight", (L + 1, L + 1), (None, None), history_init)
    wc = param(self, "weight_c", (L + 1, L + 1), (None, None), history_init)
    w32, wc32 = w.astype(jnp.float32), wc.astype(jnp.float32)
    # Layer i is t = i + 1: it reads S_j, j < t, through row t of W and Wc.
    strict_LJ = (jnp.arange(L + 1)[None, :] < jnp.arange(1, L + 1)[:, None])
    layer_xs = {
        "w_self": jnp.diagonal(w32)[1:],
        "c_self": jnp.diagonal(wc32)[1:],
        "mix": jnp.stack([w32[1:] * strict_LJ, wc32[1:] * strict_LJ], 1),
    }
    states_JBTD = jnp.zeros((L + 1,) + s0_BTD.shape, cfg.compute_dtype)
    states_JBTD = states_JBTD.at[0].set(s0_BTD.astype(cfg.compute_dtype))
    return layer_xs, states_JBTD


def history_mix(prefix_BTD: Array, weight: Array, s_BTD: Array,
                dtype) -> Array:
  """sum_{j<=t} W[t, j] S_j given the prefix sum over j < t (float32)."""
  mixed = prefix_BTD + weight.astype(jnp.float32) * s_BTD.astype(jnp.float32)
  return mixed.astype(dtype)


class HistoryLayer(nn.Module):
  """Base of the IIET / PCformer layer cores (see stack.py for the signature)."""
  config: ModelConfig
  index: int | None = None  # static layer index when unrolled

  @classmethod
  def runs(cls, cfg: ModelConfig):
    """(first layer, end, core fields) of the scans the lean stack runs."""
    return [(0, cfg.num_layers, {})]

  def setup(self):
    self.block = DecoderBlock(self.config)          # B_t
    self.predictor_norm = LayerNorm(self.config)    # LNp_t
    self.corrector_norm = LayerNorm(self.config)    # LNc_t

  def correct(self, s_BTD, w_prefix_BTD, layer_xs, positions_BT,
              segment_ids_BT, cache=None):
    """One implicit step: S_t <- LNc_t(B_t(sum_j W[t, j] S_j)).

    Returns (S_t, new keys and values); decoding reads the step's own slot
    `cache`."""
    u_BTD = history_mix(w_prefix_BTD, layer_xs["w_self"], s_BTD,
                        self.config.compute_dtype)
    b_BTD, new_kv = self.evaluate(u_BTD, positions_BT, segment_ids_BT, cache)
    return self.corrector_norm(b_BTD), new_kv

  def evaluate(self, x_BTD, positions_BT, segment_ids_BT, cache=None):
    """One block evaluation B_t(x). Under `remat_policy="per_evaluation"` the
    layer keeps only its inputs across the stack (as under "full"), and each
    evaluation is a remat of its own inside it: when the backward recomputes
    the layer, it keeps the 1 + r evaluation inputs, not their internals,
    and recomputes one evaluation's internals at a time (one more forward
    of every block than "full")."""
    if self.config.remat_policy != "per_evaluation" or cache is not None:
      return self.block(x_BTD, positions_BT, segment_ids_BT, cache)
    b_BTD, _ = nn.remat(
        lambda layer, x, p, s: layer.block(x, p, s, None),
        policy=jax.checkpoint_policies.nothing_saveable)(
            self, x_BTD, positions_BT, segment_ids_BT)
    return b_BTD, None

  def output(self, s_BTD, c_prefix_BTD, layer_xs):
    """h_t = sum_j Wc[t, j] S_j."""
    return history_mix(c_prefix_BTD, layer_xs["c_self"], s_BTD,
                       self.config.compute_dtype)


def history_decoder(config: ModelConfig, core, h0_BTD, positions_BT,
                    segment_ids_BT, shared=None, layer_xs=None, kv=None):
  """Runs `core` over the layers with the history; call inside a compact
  `__call__` (creates the `history` and `stack` submodules). Returns
  (h_L, new keys and values [L, E, B, T, N, H] when decoding with `kv`)."""
  xs, states_JBTD = History(config, name="history")(h0_BTD)
  xs.update(layer_xs or {})
  (h_BTD, _), kv = LayerStack(config, core, history=True, name="stack")(
      (h0_BTD, states_JBTD), xs, shared, positions_BT, segment_ids_BT, kv)
  return h_BTD, kv
