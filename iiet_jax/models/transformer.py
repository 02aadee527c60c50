"""Transformer++ (SPEC.md section 2): h_t = B_t(h_{t-1})."""

from __future__ import annotations

import flax.linen as nn
import jax

from iiet_jax.models.config import ModelConfig
from iiet_jax.models.layers import DecoderBlock, KVCache, kv_slot, kv_stack
from iiet_jax.models.stack import LayerStack

Array = jax.Array


class TransformerLayer(nn.Module):
  """Layer core: one explicit Euler step, h + F(h), inside B_t."""
  config: ModelConfig
  index: int | None = None

  @nn.compact
  def __call__(self, h_BTD, prefix, layer_xs, shared, positions_BT,
               segment_ids_BT, cache=None):
    del prefix, layer_xs, shared
    h_BTD, new_kv = DecoderBlock(self.config, name="block")(
        h_BTD, positions_BT, segment_ids_BT, kv_slot(cache, 0))
    # h_t, read by the switch-time norm fit (stages/switch_init.py) through
    # the "intermediates" collection; free when that is not mutable.
    self.sow("intermediates", "output", h_BTD)
    return h_BTD, None, kv_stack([new_kv])


class TransformerDecoder(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, h0_BTD: Array, positions_BT: Array,
               segment_ids_BT: Array | None, kv: KVCache | None = None):
    """Returns (h_L, new keys and values [L, 1, B, T, N, H] or None)."""
    return LayerStack(self.config, TransformerLayer, name="stack")(
        h0_BTD, {}, None, positions_BT, segment_ids_BT, kv)
