"""The decoding cache: keys and values per (layer, block evaluation).

A block evaluation attends to keys and values computed from *its own* inputs
at earlier positions. Transformer++ evaluates B_t once per layer; PCformer
order + 1 times (RK stages, corrector); IIET 1 + r_t times (predictor,
iterations), each on a different input. So the cache keeps E slots per layer,
E the most evaluations any layer makes (ModelConfig.block_evaluations_per_layer)
and the model's layer cores pick their slot by evaluation (models/iiet.py).
Caching only the last evaluation per layer, as the authors' release does for
IIET, feeds the predictor and early iterations keys they never saw in the full
forward; tests/decode/test_decode.py shows the mismatch.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from iiet_jax.models import LanguageModel
from iiet_jax.models.layers import KVCache

Array = jax.Array


class Cache(NamedTuple):
  """Fixed-size decoding state (a pytree, so it passes through jit).

  kv: keys and values [L, E, B, S, K, H] in the compute dtype, S = max_len,
    K = num_kv_heads (grouped queries share them, so the cache shrinks N / K
    times).
  lengths: [B] int32, tokens already in the cache per row; the next token of
    row b goes to position lengths[b].
  """
  kv: KVCache
  lengths: Array

  @property
  def max_len(self) -> int:
    return self.kv.key.shape[-3]


def evaluations_per_layer(model: LanguageModel) -> int:
  """E: cache slots per layer."""
  return max(model.config.block_evaluations_per_layer())


def init_cache(model: LanguageModel, batch_size: int, max_len: int) -> Cache:
  """An empty cache for `batch_size` rows of up to `max_len` tokens."""
  cfg = model.config
  if max_len > cfg.max_seq_len:
    raise ValueError(f"cache max_len={max_len} exceeds the model's "
                     f"max_seq_len={cfg.max_seq_len}")
  shape = (cfg.num_layers, evaluations_per_layer(model), batch_size, max_len,
           cfg.num_kv_heads, cfg.head_dim)
  zeros = jnp.zeros(shape, cfg.compute_dtype)
  return Cache(KVCache(zeros, zeros), jnp.zeros((batch_size,), jnp.int32))
