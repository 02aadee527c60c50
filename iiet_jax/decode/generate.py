"""Generation: prefill, then decode steps in a `lax.while_loop`, in one jit.

Rows stop on their own at `eos_id` (later positions hold `pad_id`); the loop
ends when every row has stopped or `max_new_tokens` are out. The cache is
sized once from the request, so a given (batch, prompt length, budget)
compiles once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from iiet_jax.decode.cache import init_cache
from iiet_jax.decode.sampling import GenerateError, sample
from iiet_jax.decode.steps import decode_step, prefill
from iiet_jax.models import LanguageModel

Array = jax.Array


def generate(model: LanguageModel, params, prompt_BT, max_new_tokens: int, *,
             rng: Array | None, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, eos_id: int | None = None, pad_id: int = 0,
             prompt_lengths_B=None, cache_len: int | None = None) -> Array:
  """Continues each prompt by up to `max_new_tokens` tokens.

  prompt_BT: int [B, T]; prompts of different lengths are right-padded with
    `prompt_lengths_B` giving the real lengths (row b continues after its own
    prompt).
  rng: a PRNG key; may be None for greedy decoding (temperature 0).
  cache_len: KV cache positions (default T + max_new_tokens).
  Returns int32 [B, T + max_new_tokens]: prompt, continuation, then `pad_id`
  after a row's eos, after its budget, and in a short prompt's padding.
  """
  prompt_BT = jnp.asarray(prompt_BT, jnp.int32)
  B, T = prompt_BT.shape
  total = T + max_new_tokens
  cache_len = total if cache_len is None else cache_len
  limit = model.config.max_seq_len
  if max_new_tokens < 1 or T < 1:
    raise GenerateError(f"need a non-empty prompt and max_new_tokens >= 1; "
                        f"got prompt length {T}, "
                        f"max_new_tokens={max_new_tokens}")
  if total > limit:
    raise GenerateError(f"prompt length {T} + max_new_tokens "
                        f"{max_new_tokens} = {total} exceeds the model's "
                        f"max_seq_len={limit}")
  if total > cache_len:
    raise GenerateError(f"prompt length {T} + max_new_tokens "
                        f"{max_new_tokens} = {total} exceeds the cache "
                        f"(cache_len={cache_len})")
  if temperature > 0 and rng is None:
    raise GenerateError("sampling with temperature > 0 needs rng=a PRNG key")
  if prompt_lengths_B is None:
    lengths_B = jnp.full((B,), T, jnp.int32)
  else:
    lengths = np.asarray(prompt_lengths_B)
    if lengths.shape != (B,) or lengths.min() < 1 or lengths.max() > T:
      raise GenerateError(f"prompt_lengths_B must be {B} lengths in 1..{T}; "
                          f"got {lengths.tolist()}")
    lengths_B = jnp.asarray(lengths, jnp.int32)
  rng = jax.random.key(0) if rng is None else rng
  return _generate(model, params, prompt_BT, lengths_B, rng,
                   max_new_tokens=max_new_tokens, cache_len=cache_len,
                   temperature=float(temperature), top_k=int(top_k),
                   top_p=float(top_p), eos_id=eos_id, pad_id=int(pad_id))


@functools.partial(jax.jit, static_argnames=(
    "model", "max_new_tokens", "cache_len", "temperature", "top_k", "top_p",
    "eos_id", "pad_id"))
def _generate(model, params, prompt_BT, lengths_B, rng, *, max_new_tokens,
              cache_len, temperature, top_k, top_p, eos_id, pad_id):
  B, T = prompt_BT.shape
  rows_B = jnp.arange(B)

  def choose(logits_BV, rng, done_B):
    rng, key = jax.random.split(rng)
    token_B = sample(logits_BV, key, temperature, top_k, top_p)
    token_B = jnp.where(done_B, pad_id, token_B)
    stop_B = done_B if eos_id is None else done_B | (token_B == eos_id)
    return token_B, stop_B, rng

  cache = init_cache(model, B, cache_len)
  logits_BTV, cache = prefill(model, params, prompt_BT, cache, lengths_B)
  in_prompt_BT = jnp.arange(T)[None, :] < lengths_B[:, None]
  out_BT = jnp.full((B, T + max_new_tokens), pad_id, jnp.int32)
  out_BT = out_BT.at[:, :T].set(jnp.where(in_prompt_BT, prompt_BT, pad_id))
  done_B = jnp.zeros((B,), bool)
  token_B, done_B, rng = choose(logits_BTV[rows_B, lengths_B - 1], rng, done_B)
  out_BT = out_BT.at[rows_B, lengths_B].set(token_B)

  def keep_going(state):
    i, _, _, _, done_B, _ = state
    return (i < max_new_tokens) & ~jnp.all(done_B)

  def step(state):
    i, token_B, out_BT, cache, done_B, rng = state
    logits_BV, cache = decode_step(model, params, token_B, cache)
    token_B, done_B, rng = choose(logits_BV, rng, done_B)
    out_BT = out_BT.at[rows_B, lengths_B + i].set(token_B)
    return i + 1, token_B, out_BT, cache, done_B, rng

  state = (jnp.int32(1), token_B, out_BT, cache, done_B, rng)
  return jax.lax.while_loop(keep_going, step, state)[2]
