"""Prefill and one decode step: the model's `decode` mode on a `Cache`.

Both are pure functions of (params, inputs, cache), jit-able with the model
static; the cache size is fixed, so every decode step compiles once. Writes
past the end of the cache are not checked under jit (outside jit they raise):
`generate` sizes its cache so that none happen.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from iiet_jax.decode.cache import Cache
from iiet_jax.models import LanguageModel

Array = jax.Array


def _check_room(cache: Cache, num_new: int):
  if num_new > cache.max_len:
    raise ValueError(f"{num_new} tokens do not fit a cache of "
                     f"max_len={cache.max_len}")
  if not isinstance(cache.lengths, jax.core.Tracer):
    longest = int(jnp.max(cache.lengths)) + num_new
    if longest > cache.max_len:
      raise ValueError(f"the cache holds max_len={cache.max_len} tokens per "
                       f"row; this call would need {longest}")


def _extend(model: LanguageModel, params, tokens_BT: Array, cache: Cache):
  """Runs tokens at each row's next positions; returns logits and new kv."""
  _check_room(cache, tokens_BT.shape[1])
  positions_BT = (cache.lengths[:, None] +
                  jnp.arange(tokens_BT.shape[1], dtype=jnp.int32))
  return model.apply({"params": params}, tokens_BT, positions_BT, cache.kv,
                     method=LanguageModel.decode)


def prefill(model: LanguageModel, params, tokens_BT: Array, cache: Cache,
            lengths_B: Array | None = None) -> tuple[Array, Cache]:
  """Runs a prompt [B, T] into the cache; returns (logits [B, T, V], cache).

  Prompts of equal length need no `lengths_B`. Shorter prompts may be padded
  on the right with `lengths_B` giving each row's real length: the pads are
  written to the cache but sit past the row's length, so later tokens never
  attend to them and overwrite them. Row b's next-token logits are then
  logits[b, lengths_B[b] - 1]. A non-empty cache is extended (chunked
  prefill).
  """
  logits_BTV, kv = _extend(model, params, tokens_BT, cache)
  if lengths_B is None:
    lengths_B = jnp.full_like(cache.lengths, tokens_BT.shape[1])
  return logits_BTV, Cache(kv, cache.lengths + lengths_B.astype(jnp.int32))


def decode_step(model: LanguageModel, params, token_B: Array,
                cache: Cache) -> tuple[Array, Cache]:
  """Runs one token per row; returns (logits [B, V], cache)."""
  logits_BTV, kv = _extend(model, params, token_B[:, None], cache)
  return logits_BTV[:, 0], Cache(kv, cache.lengths + 1)
