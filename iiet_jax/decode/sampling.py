"""Choosing the next token from logits [B, V]: greedy, temperature, top-k, top-p.

All functions are jit-able; temperature, k and p are static Python numbers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from iiet_jax.errors import UserError

Array = jax.Array


def greedy(logits_BV: Array) -> Array:
  """The most likely token of each row."""
  return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)


def top_k_filter(logits_BV: Array, k: int) -> Array:
  """Keeps the k largest logits of each row, the rest -inf (k <= 0: all)."""
  if k <= 0 or k >= logits_BV.shape[-1]:
    return logits_BV
  kth_B1 = jax.lax.top_k(logits_BV, k)[0][:, -1:]
  return jnp.where(logits_BV >= kth_B1, logits_BV, -jnp.inf)


def top_p_filter(logits_BV: Array, p: float) -> Array:
  """Nucleus: keeps the smallest set of most likely tokens whose probability
  reaches p (the most likely token always stays), the rest -inf."""
  if p >= 1.0:
    return logits_BV
  order_BV = jnp.argsort(-logits_BV, axis=-1)
  sorted_BV = jnp.take_along_axis(logits_BV, order_BV, axis=-1)
  probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
  # A token stays if the tokens ranked above it hold less than p.
  before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
  keep_sorted_BV = before_BV < p
  keep_BV = jnp.zeros_like(keep_sorted_BV).at[
      jnp.arange(logits_BV.shape[0])[:, None], order_BV].set(keep_sorted_BV)
  return jnp.where(keep_BV, logits_BV, -jnp.inf)


class GenerateError(UserError, ValueError):
  """A generation request the model, its cache or the sampler cannot
  serve."""

  kind = "Generate"


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
  """The sampling settings, each in its range (named as the CLI flags)."""
  if not (math.isfinite(temperature) and temperature >= 0):
    raise GenerateError(f"--temperature={temperature} must be a finite "
                        f"number >= 0 (0: greedy, the most likely token).")
  if not 0 < top_p <= 1:
    raise GenerateError(f"--top_p={top_p} must lie in (0, 1] (1: no "
                        f"nucleus filtering).")
  if top_k < 0:
    raise GenerateError(f"--top_k={top_k} must be >= 0 (0: no top-k "
                        f"filtering).")


def sample(logits_BV: Array, rng: Array, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0) -> Array:
  """Next token per row: greedy at temperature 0, else a draw from
  softmax(logits / temperature) restricted by top-k, then top-p."""
  check_sampling(temperature, top_k, top_p)
  if temperature == 0.0:
    return greedy(logits_BV)
  logits_BV = logits_BV.astype(jnp.float32) / temperature
  logits_BV = top_p_filter(top_k_filter(logits_BV, top_k), top_p)
  return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)
