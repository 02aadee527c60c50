"""IIET: the iterative implicit Euler layer (SPEC.md section 3).

Per layer t: an explicit predictor S_t = LNp_t(B_t(h_{t-1})), then r_t
fixed-point iterations S_t = LNc_t(B_t(sum_j W[t, j] S_j)) of the *same* block
(an `nn.scan` whose parameters are broadcast across iterations), and the output
h_t = sum_j Wc[t, j] S_j. The layer stack (stack.py) keeps the history sums.

Per-layer counts r_t (E-IIET, from IIAD) are static when layers are unrolled.
Under `nn.scan` over layers every layer runs max(r_t) iterations and the ones
past its own r_t leave S_t unchanged (`jnp.where`), which is exact but costs
the compute of max(r_t) iterations; uniform counts pay nothing extra.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from iiet_jax.models.config import ModelConfig
from iiet_jax.models.history import HistoryLayer, history_decoder

Array = jax.Array


class IIETLayer(HistoryLayer):
  """Layer core: predictor, r_t implicit iterations, history output mix."""

  def __call__(self, h_BTD, prefix, layer_xs, shared, positions_BT,
               segment_ids_BT):
    del shared
    cfg = self.config
    w_prefix_BTD, c_prefix_BTD = prefix
    s_BTD = self.predictor_norm(self.block(h_BTD, positions_BT, segment_ids_BT))
    predictor_BTD = s_BTD

    if self.index is not None:
      num_iterations, masked = cfg.iterations[self.index], False
    else:
      num_iterations, masked = cfg.max_iterations, not cfg.uniform_iterations

    def iterate(layer, s_BTD, k):
      new_BTD = layer.correct(s_BTD, w_prefix_BTD, layer_xs, positions_BT,
                              segment_ids_BT)
      if masked:
        new_BTD = jnp.where(k < layer_xs["iterations"], new_BTD, s_BTD)
      layer.sow("intermediates", "iterates", new_BTD)
      return new_BTD, None

    if num_iterations > 0:
      s_BTD, _ = nn.scan(iterate, variable_broadcast="params",
                         variable_axes={"intermediates": 0},
                         split_rngs={"params": False},
                         length=num_iterations,
                         unroll=cfg.unroll_iterations)(
                             self, s_BTD, jnp.arange(num_iterations))
    elif self.is_initializing():
      self.corrector_norm(s_BTD)  # LNc_t exists even when r_t = 0.
    # S_t^(0) and (above) S_t^(1..r): read by IIAD's influence measure
    # (SPEC.md 5) through the "intermediates" collection, free when that is
    # not mutable. Sown after the loop, which must find the collection empty.
    self.sow("intermediates", "predictor", predictor_BTD)
    return self.output(s_BTD, c_prefix_BTD, layer_xs), s_BTD


class IIETDecoder(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, h0_BTD: Array, positions_BT: Array,
               segment_ids_BT: Array | None) -> Array:
    iterations = jnp.asarray(self.config.iterations, jnp.int32)
    return history_decoder(self.config, IIETLayer, h0_BTD, positions_BT,
                           segment_ids_BT, layer_xs={"iterations": iterations})
