"""IIET: the iterative implicit Euler layer (SPEC.md section 3).

Per layer t: an explicit predictor S_t = LNp_t(B_t(h_{t-1})), then r_t
fixed-point iterations S_t = LNc_t(B_t(sum_j W[t, j] S_j)) of the *same* block
(an `nn.scan` whose parameters are broadcast across iterations), and the output
h_t = sum_j Wc[t, j] S_j. The layer stack (stack.py) keeps the history sums.

Per-layer counts r_t (E-IIET, from IIAD) are static when layers are unrolled.
Under `nn.scan` over layers every layer runs max(r_t) iterations and the ones
past its own r_t leave S_t unchanged (`jnp.where`), which is exact but costs
the compute of max(r_t) iterations; uniform counts pay nothing extra.

Decoding gives every block evaluation its own KV cache slot: slot 0 the
predictor, slot k the k-th iteration (its new keys and values leave the
iteration scan as ys). At an earlier position the predictor and each
iteration saw different inputs, so one shared slot (the last iteration's, as
in the authors' release) would not reproduce this forward. Slots of masked
iterations get written but are read only by those iterations, whose results
are dropped; slots past an unrolled layer's r_t get zeros.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from iiet_jax.models.config import ModelConfig
from iiet_jax.models.history import HistoryLayer, history_decoder
from iiet_jax.models.layers import KVCache, kv_slot

Array = jax.Array


class IIETLayer(HistoryLayer):
  """Layer core: predictor, r_t implicit iterations, history output mix."""
  # A static r for every layer this core runs (a run of equal r_t).
  num_iterations: int | None = None

  @classmethod
  def runs(cls, cfg: ModelConfig):
    """Consecutive layers with equal r_t, each run with its static count."""
    runs, start = [], 0
    for i in range(1, cfg.num_layers + 1):
      if i == cfg.num_layers or cfg.iterations[i] != cfg.iterations[start]:
        runs.append((start, i, {"num_iterations": cfg.iterations[start]}))
        start = i
    return runs

  def __call__(self, h_BTD, prefix, layer_xs, shared, positions_BT,
               segment_ids_BT, cache=None):
    del shared
    cfg = self.config
    w_prefix_BTD, c_prefix_BTD = prefix
    b_BTD, predictor_kv = self.evaluate(h_BTD, positions_BT,
                                        segment_ids_BT, kv_slot(cache, 0))
    s_BTD = self.predictor_norm(b_BTD)
    predictor_BTD = s_BTD

    if self.num_iterations is not None:
      num_iterations, masked = self.num_iterations, False
    elif self.index is not None:
      num_iterations, masked = cfg.iterations[self.index], False
    else:
      num_iterations, masked = cfg.max_iterations, not cfg.uniform_iterations

    def iterate(layer, s_BTD, k):
      new_BTD, new_kv = layer.correct(s_BTD, w_prefix_BTD, layer_xs,
                                      positions_BT, segment_ids_BT,
                                      kv_slot(cache, k + 1))
      if masked:
        new_BTD = jnp.where(k < layer_xs["iterations"], new_BTD, s_BTD)
      layer.sow("intermediates", "iterates", new_BTD)
      return new_BTD, new_kv

    new_kvs = [] if predictor_kv is None else [
        jax.tree.map(lambda a: a[None], predictor_kv)]
    if num_iterations > 0:
      s_BTD, iteration_kv = nn.scan(iterate, variable_broadcast="params",
                                    variable_axes={"intermediates": 0},
                                    split_rngs={"params": False},
                                    length=num_iterations,
                                    unroll=cfg.unroll_iterations)(
          self, s_BTD, jnp.arange(num_iterations))
      new_kvs += [] if iteration_kv is None else [iteration_kv]
    elif self.is_initializing():
      self.corrector_norm(s_BTD)  # LNc_t exists even when r_t = 0.
    # S_t^(0) and (above) S_t^(1..r): read by IIAD's influence measure
    # (SPEC.md 5) through the "intermediates" collection, free when that is
    # not mutable. Sown after the loop, which must find the collection empty.
    self.sow("intermediates", "predictor", predictor_BTD)
    new_kv = None
    if cache is not None:
      unused = cache.kv.key.shape[1] - 1 - num_iterations
      new_kvs.append(jax.tree.map(
          lambda a: jnp.zeros((unused,) + a.shape[1:], a.dtype), new_kvs[0]))
      new_kv = jax.tree.map(lambda *a: jnp.concatenate(a), *new_kvs)
    return self.output(s_BTD, c_prefix_BTD, layer_xs), s_BTD, new_kv


class IIETDecoder(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, h0_BTD: Array, positions_BT: Array,
               segment_ids_BT: Array | None, kv: KVCache | None = None):
    """Returns (h_L, new keys and values [L, 1 + max r_t, B, T, N, H] or
    None)."""
    iterations = jnp.asarray(self.config.iterations, jnp.int32)
    return history_decoder(self.config, IIETLayer, h0_BTD, positions_BT,
                           segment_ids_BT, layer_xs={"iterations": iterations},
                           kv=kv)
