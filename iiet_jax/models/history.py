"""The learned multistep history shared by IIET and PCformer (SPEC.md section 3).

`W` mixes the history into the input of every implicit iteration, `Wc` into
the layer output; both are (L+1) x (L+1) and only their lower triangle is read.
`History` owns the two matrices and hands the layer stack what it needs: the
per-layer slices (diagonal weight and the column feeding later layers) and the
accumulators started from S_0 = Embed(x).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from iiet_jax.models.config import ModelConfig
from iiet_jax.models.layers import param

Array = jax.Array


def history_init(key, shape, dtype=jnp.float32) -> Array:
  """Row t holds 1/(t+1) in columns 0..t: a plain average of the history."""
  del key
  n = shape[0]
  rows = jnp.arange(n)[:, None]
  cols = jnp.arange(n)[None, :]
  return jnp.where(cols <= rows, 1.0 / (rows + 1.0), 0.0).astype(dtype)


class History(nn.Module):
  """W, Wc and the views of them that the layer stack reads."""
  config: ModelConfig

  @nn.compact
  def __call__(self, s0_BTD: Array):
    """Returns (per-layer slices with a leading L axis, (A_0, C_0))."""
    L = self.config.num_layers
    w = param(self, "weight", (L + 1, L + 1), (None, None), history_init)
    wc = param(self, "weight_c", (L + 1, L + 1), (None, None), history_init)
    # Layer t = i + 1 feeds later layers r > i through W[r + 1, t].
    later_LL = jnp.tril(jnp.ones((L, L), jnp.float32), -1)
    layer_xs = {
        "w_self": jnp.diagonal(w)[1:].astype(jnp.float32),
        "c_self": jnp.diagonal(wc)[1:].astype(jnp.float32),
        "w_future": (w[1:, 1:].astype(jnp.float32) * later_LL).T,
        "c_future": (wc[1:, 1:].astype(jnp.float32) * later_LL).T,
    }
    s0_1BTD = s0_BTD.astype(jnp.float32)[None]
    w_acc_LBTD = w[1:, 0].astype(jnp.float32)[:, None, None, None] * s0_1BTD
    c_acc_LBTD = wc[1:, 0].astype(jnp.float32)[:, None, None, None] * s0_1BTD
    return layer_xs, (w_acc_LBTD, c_acc_LBTD)
