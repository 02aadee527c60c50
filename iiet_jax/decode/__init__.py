"""Decoding: a KV-cached prefill and decode steps, sampling and generation.

    cache = init_cache(model, batch_size, max_len)
    logits_BTV, cache = prefill(model, params, prompt_BT, cache)
    logits_BV, cache = decode_step(model, params, token_B, cache)
    tokens_BT = generate(model, params, prompt_BT, 32, rng=key, top_p=0.9)

The cache holds one K/V pair per (layer, block evaluation), so decoding
reproduces the full forward of every architecture exactly (cache.py).
"""

from iiet_jax.decode.cache import Cache, init_cache
from iiet_jax.decode.generate import generate
from iiet_jax.decode.sampling import (GenerateError, check_sampling,
                                      greedy, sample, top_k_filter,
                                      top_p_filter)
from iiet_jax.decode.steps import decode_step, prefill

__all__ = ["Cache", "GenerateError", "check_sampling", "decode_step",
           "generate", "greedy",
           "init_cache", "prefill", "sample", "top_k_filter", "top_p_filter"]
