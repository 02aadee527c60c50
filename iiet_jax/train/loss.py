"""Next-token cross-entropy, computed in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def next_token_loss(logits_BTV: Array, tokens_BT: Array,
                    mask_BT: Array | None = None) -> tuple[Array, Array]:
  """Mean CE of predicting token i+1 from position i; returns (loss, count).

  `mask_BT` marks the *target* tokens that count (padding and document
  boundaries are 0); position T-1 has no target and never counts.
  """
  logits = logits_BTV[:, :-1].astype(jnp.float32)
  targets_BT = tokens_BT[:, 1:]
  logz = jax.nn.logsumexp(logits, axis=-1)
  gold = jnp.take_along_axis(logits, targets_BT[..., None], axis=-1)[..., 0]
  nll = logz - gold
  weights = (jnp.ones_like(nll) if mask_BT is None
             else mask_BT[:, 1:].astype(jnp.float32))
  count = jnp.sum(weights)
  return jnp.sum(nll * weights) / jnp.maximum(count, 1.0), count
