"""The language model around any decoder: embedding, decoder, final norm, head.

    logits = Head(RMSNorm_f(decoder(Embed(x))))          (SPEC.md sections 2-4)

The head is the embedding transposed when `tie_embeddings` is set. Logits are
float32 whatever the compute dtype. `decode` is the same forward run against a
KV cache (iiet_jax/decode builds prefill, decode steps and sampling on it).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from iiet_jax.models import registry
from iiet_jax.models.config import ModelConfig
from iiet_jax.models.layers import (BTD, BTV, KVCache, RMSNorm, constrain,
                                    param, write_kv)

Array = jax.Array

class LanguageModel(nn.Module):
  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.embedding = param(self, "embedding", (cfg.vocab_size, cfg.d_model),
                           ("vocab_embedding", "embed"))
    self.decoder = registry.get(cfg.arch).decoder_class()(cfg)
    self.final_norm = RMSNorm(cfg)
    if not cfg.tie_embeddings:
      self.head = param(self, "head", (cfg.d_model, cfg.vocab_size),
                        ("embed", "vocab_head"))

  def __call__(self, tokens_BT: Array, positions_BT: Array | None = None,
               segment_ids_BT: Array | None = None) -> Array:
    """Token ids [B, T] -> float32 logits [B, T, V]."""
    return self.logits_from_embeddings(self.embed(tokens_BT), positions_BT,
                                       segment_ids_BT)

  def embed(self, tokens_BT: Array) -> Array:
    # Look up in a gathered table: rows gathered from a sharded table come
    # out sharded along `embed`, and turning that into batch sharding makes
    # XLA replicate the gather (its "involuntary full rematerialization").
    emb_VD = constrain(self.embedding.astype(self.config.compute_dtype),
                       (None, None))
    return constrain(jnp.take(emb_VD, tokens_BT, axis=0), BTD)

  def decode(self, tokens_BT: Array, positions_BT: Array,
             kv: KVCache) -> tuple[Array, KVCache]:
    """New tokens at `positions_BT` (contiguous per row) against a KV cache
    [L, E, B, S, N, H]: they attend to the cache positions before them and to
    each other, and their keys and values are written at their positions.
    Returns (logits [B, T, V], updated cache)."""
    h_BTD, new_kv = self.decoder(self.embed(tokens_BT), positions_BT, None, kv)
    return self.head_logits(h_BTD), write_kv(kv, new_kv, positions_BT[:, 0])

  def logits_from_embeddings(self, h0_BTD: Array,
                             positions_BT: Array | None = None,
                             segment_ids_BT: Array | None = None) -> Array:
    B, T = h0_BTD.shape[:2]
    if positions_BT is None:
      positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    h_BTD, _ = self.decoder(h0_BTD, positions_BT, segment_ids_BT)
    return self.head_logits(h_BTD)

  def head_logits(self, h_BTD: Array) -> Array:
    """Head(RMSNorm_f(h_L)) in float32."""
    cfg = self.config
    h_BTD = self.final_norm(h_BTD)
    head_DV = self.embedding.T if cfg.tie_embeddings else self.head
    logits_BTV = jnp.einsum("btd,dv->btv", h_BTD,
                            head_DV.astype(cfg.compute_dtype),
                            preferred_element_type=jnp.float32)
    return constrain(logits_BTV, BTV)
