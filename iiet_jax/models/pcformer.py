"""PCformer: Runge-Kutta predictor, one corrector step (SPEC.md section 4).

Per layer: stages F_k = LNrk_k(B_t(stage input)), an EMA-weighted predictor
P = y + sum_k c_k(alpha) F_k normalised by LNp_t, then one corrector step
LNc_t(B_t(sum_j W[t, j] S_j)) and the Wc output mix. `alpha` and the LNrk norms
are one set for the whole model, passed to every layer as `shared`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from iiet_jax.models.config import ModelConfig
from iiet_jax.models.history import HistoryLayer, history_decoder
from iiet_jax.models.layers import (KVCache, kv_slot, kv_stack, layer_norm,
                                    param)

Array = jax.Array


def stage_inputs(order: int):
  """Which earlier stage feeds stage k, and with what factor (F_0 := 0)."""
  if order == 2:
    return ((0, 0.0), (1, 1.0))
  return ((0, 0.0), (1, 0.5), (2, 0.5), (3, 1.0))


def ema_coefficients(alpha: Array, order: int) -> list[Array]:
  """c_k of P = y + sum_k c_k F_k: alpha(1-alpha)^(order-k), last is alpha."""
  return [alpha * (1.0 - alpha) ** (order - k) for k in range(1, order + 1)]


class PCformerLayer(HistoryLayer):
  """Layer core: RK predictor, one corrector step, history output mix."""

  def __call__(self, h_BTD, prefix, layer_xs, shared, positions_BT,
               segment_ids_BT, cache=None):
    cfg = self.config
    w_prefix_BTD, c_prefix_BTD = prefix
    y32 = h_BTD.astype(jnp.float32)
    stages = [jnp.zeros_like(y32)]
    new_kvs = []  # cache slot e: block evaluation e (RK stages, corrector)
    for k, (src, factor) in enumerate(stage_inputs(cfg.pc_order)):
      x_BTD = (y32 + factor * stages[src]).astype(cfg.compute_dtype) if src \
          else h_BTD
      b_BTD, new_kv = self.evaluate(x_BTD, positions_BT, segment_ids_BT,
                                    kv_slot(cache, k))
      new_kvs.append(new_kv)
      f32 = layer_norm(b_BTD, shared["rk_scale"][k], shared["rk_bias"][k],
                       cfg.ln_eps)
      stages.append(f32)
    alpha = shared["alpha"][0].astype(jnp.float32)
    p32 = y32
    for c, f32 in zip(ema_coefficients(alpha, cfg.pc_order), stages[1:]):
      p32 = p32 + c * f32
    s_BTD = self.predictor_norm(p32)
    s_BTD, new_kv = self.correct(s_BTD, w_prefix_BTD, layer_xs,
                                 positions_BT, segment_ids_BT,
                                 kv_slot(cache, cfg.pc_order))
    new_kvs.append(new_kv)
    return (self.output(s_BTD, c_prefix_BTD, layer_xs), s_BTD,
            kv_stack(new_kvs))


class PCformerDecoder(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, h0_BTD: Array, positions_BT: Array,
               segment_ids_BT: Array | None, kv: KVCache | None = None):
    """Returns (h_L, new keys and values [L, order + 1, B, T, N, H] or
    None)."""
    cfg = self.config
    order, d = cfg.pc_order, cfg.d_model
    shared = {
        "alpha": param(self, "alpha", (1,), (None,),
                       nn.initializers.constant(cfg.pc_alpha_init)),
        "rk_scale": param(self, "rk_scale", (order, d), (None, "norm"),
                          nn.initializers.ones),
        "rk_bias": param(self, "rk_bias", (order, d), (None, "norm"),
                         nn.initializers.zeros),
    }
    return history_decoder(cfg, PCformerLayer, h0_BTD, positions_BT,
                           segment_ids_BT, shared=shared, kv=kv)
