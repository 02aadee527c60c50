"""KV-cached decoding reproduces the full forward; generation and sampling."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import apply, init_params, random_tokens, small_config
from iiet_jax.decode import (GenerateError, decode_step, generate, init_cache,
                             prefill, sample, top_k_filter, top_p_filter)
from iiet_jax.models import build_model, for_inference

TOL = 1e-4  # max abs logit difference, float32
CASES = {
    "transformer": dict(arch="transformer"),
    "transformer-unrolled": dict(arch="transformer", scan_layers=False,
                                 num_layers=2),
    "pcformer2": dict(arch="pcformer"),
    "pcformer4-unrolled": dict(arch="pcformer", pc_order=4, num_layers=2,
                               scan_layers=False),
    "iiet3": dict(arch="iiet", iterations=3),
    "iiet302": dict(arch="iiet", iterations=(3, 0, 2)),
    "iiet302-unrolled": dict(arch="iiet", iterations=(3, 0, 2),
                             scan_layers=False),
    "iiet0": dict(arch="iiet", iterations=0),
    "iiet-loop": dict(arch="iiet", iterations=(1, 2, 2),
                      unroll_iterations=False),
    # Grouped queries: 4 heads over 2 kv heads / 1 kv head; llama3 RoPE.
    "transformer-gqa2-llama3": dict(arch="transformer", num_kv_heads=2,
                                    rope_type="llama3",
                                    rope_original_max_positions=16),
    "iiet302-gqa1": dict(arch="iiet", iterations=(3, 0, 2), num_kv_heads=1),
    "pcformer2-gqa2": dict(arch="pcformer", num_kv_heads=2),
}
SLOW_CASES = ("pcformer2-gqa2",)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def cached_logits(model, params, tokens_BT, chunks, max_len, last_only=False):
  """Prefill in `chunks`, then one decode step per remaining token.

  With `last_only`, every evaluation of a layer reads the last evaluation's
  keys and values at earlier positions (the authors' release for IIET)."""
  cache = init_cache(model, tokens_BT.shape[0], max_len)
  outs, start = [], 0
  for n in chunks:
    logits_BTV, cache = prefill(model, params, tokens_BT[:, start:start + n],
                                cache)
    outs.append(logits_BTV)
    start += n

  def step(cache, token_B):
    if last_only:
      kv = jax.tree.map(lambda a: jnp.broadcast_to(a[:, -1:], a.shape),
                        cache.kv)
      cache = cache._replace(kv=kv)
    logits_BV, cache = decode_step(model, params, token_B, cache)
    return cache, logits_BV

  cache, logits_TBV = jax.lax.scan(step, cache, tokens_BT[:, start:].T)
  return jnp.concatenate(outs + [logits_TBV.swapaxes(0, 1)], axis=1), cache


def setup(overrides, batch=2, length=12):
  cfg = small_config(**overrides)
  tokens = random_tokens(cfg, batch, length, seed=1)
  return cfg, build_model(cfg), init_params(cfg, tokens), tokens


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CASES else n
    for n in CASES])
def test_prefill_and_steps_equal_full_forward(name):
  cfg, model, params, tokens = setup(CASES[name])
  full = apply(cfg, params, tokens)
  # A cache longer than the text: empty slots must stay masked. One case
  # prefills in two chunks.
  chunks = (4, 3) if name == "iiet302" else (7,)
  got, cache = cached_logits(model, params, tokens, chunks, 16)
  assert got.shape == full.shape
  assert float(jnp.max(jnp.abs(got - full))) < TOL
  # One slot per block evaluation, each holding its own keys.
  keys_LEBSKH = np.asarray(cache.kv.key)
  used = cfg.block_evaluations_per_layer()
  assert keys_LEBSKH.shape == (cfg.num_layers, max(used), 2, 16,
                               cfg.num_kv_heads, cfg.head_dim)
  for t, n in enumerate(used):
    for e in range(n):
      for f in range(e):
        assert np.abs(keys_LEBSKH[t, e] - keys_LEBSKH[t, f]).max() > 1e-2
    if not cfg.scan_layers:  # masked iterations under scan write their slots
      assert not keys_LEBSKH[t, n:].any()


def test_e_iiet_is_served_unrolled_with_the_same_function():
  cfg, model, params, tokens = setup(CASES["iiet302"])
  served, served_params = for_inference(model, params)
  assert not served.config.scan_layers
  assert served.config.iterations == cfg.iterations
  full = apply(cfg, params, tokens)
  got, cache = cached_logits(served, served_params, tokens, (5,), 12)
  assert float(jnp.max(jnp.abs(got - full))) < TOL
  # Unrolled, layer 2 (r_t = 0) runs its predictor only: no iteration slots.
  assert not np.asarray(cache.kv.key)[1, 1:].any()
  for name in ("iiet3", "transformer", "iiet302-unrolled"):
    _, m, p, _ = setup(CASES[name])
    assert for_inference(m, p) == (m, p)


@pytest.mark.parametrize("name", ["iiet3", "pcformer2"])
def test_last_evaluation_cache_does_not_match(name):
  """Caching only each layer's last evaluation (the authors' release for
  IIET) feeds earlier evaluations keys they never saw: the logits drift."""
  cfg, model, params, tokens = setup(CASES[name])
  full = apply(cfg, params, tokens)
  naive, _ = cached_logits(model, params, tokens, (4,), 12, last_only=True)
  np.testing.assert_allclose(naive[:, :4], full[:, :4], atol=TOL)
  assert float(jnp.max(jnp.abs(naive[:, 4:] - full[:, 4:]))) > 100 * TOL


def test_ragged_prompts_and_one_compile():
  """Right-padded prompts of different lengths decode like each alone, and
  the jitted decode step compiles once."""
  cfg, model, params, tokens = setup(CASES["iiet302"], length=10)
  lengths = np.array([6, 3])
  padded = tokens.at[1, 3:6].set(0)
  jprefill = jax.jit(prefill, static_argnums=0)
  jstep = jax.jit(decode_step, static_argnums=0)
  logits_BTV, cache = jprefill(model, params, padded[:, :6],
                               init_cache(model, 2, 16), lengths)
  np.testing.assert_array_equal(cache.lengths, lengths)
  steps = []
  for i in range(4):
    token_B = tokens[jnp.arange(2), lengths + i]
    logits_BV, cache = jstep(model, params, token_B, cache)
    steps.append(logits_BV)
  assert jstep._cache_size() == 1
  for b, n in enumerate(lengths):
    alone = tokens[b:b + 1, :n + 4]
    full = apply(cfg, params, alone)[0]
    got = jnp.concatenate([logits_BTV[b, :n], jnp.stack(steps)[:, b]])
    assert float(jnp.max(jnp.abs(got - full))) < TOL


@pytest.fixture(scope="module")
def lm():
  _, model, params, tokens = setup(CASES["iiet302"], batch=3, length=5)
  return model, params, tokens


def greedy_by_full_forward(model, params, prompt_BT, n):
  """Argmax continuation from repeated full forwards (one padded shape)."""
  B, T = prompt_BT.shape
  forward = jax.jit(lambda t: model.apply({"params": params}, t))
  buf_BT = jnp.zeros((B, T + n), jnp.int32).at[:, :T].set(prompt_BT)
  for i in range(n):  # causal: the padding after T + i changes nothing
    next_B = jnp.argmax(forward(buf_BT)[:, T + i - 1], -1)
    buf_BT = buf_BT.at[:, T + i].set(next_B)
  return np.asarray(buf_BT)


def test_greedy_generate_equals_full_forward_argmax(lm):
  model, params, prompt = lm
  want = greedy_by_full_forward(model, params, prompt, 8)
  got = generate(model, params, prompt, 8, rng=None)
  np.testing.assert_array_equal(got, want)
  # Top-k = 1 leaves only the argmax to sample (top-p: test_filters...).
  got = generate(model, params, prompt, 8, rng=jax.random.key(3),
                 temperature=1.0, top_k=1)
  np.testing.assert_array_equal(got, want)


def test_eos_stops_each_row(lm):
  model, params, prompt = lm
  greedy = np.asarray(generate(model, params, prompt, 8, rng=None))
  eos = int(greedy[0, 5 + 2])  # row 0 emits it as its third new token
  got = np.asarray(generate(model, params, prompt, 8, rng=None, eos_id=eos,
                            pad_id=-1))
  for row, want in zip(got, greedy):
    new = list(want[5:])
    stop = new.index(eos) + 1 if eos in new else len(new)
    np.testing.assert_array_equal(row[:5 + stop], want[:5 + stop])
    assert (row[5 + stop:] == -1).all()
  assert (got[0, 8:] == -1).all()


def test_sampling_reproducible(lm):
  model, params, prompt = lm
  run = lambda seed: np.asarray(generate(
      model, params, prompt, 8, rng=jax.random.key(seed), temperature=1.0,
      top_k=20, top_p=0.9))
  a, b, c = run(0), run(0), run(1)
  np.testing.assert_array_equal(a, b)
  assert (a[:, 5:] != c[:, 5:]).any()
  np.testing.assert_array_equal(a[:, :5], prompt)


def test_ragged_generate_equals_each_alone(lm):
  model, params, prompt = lm
  lengths = np.array([5, 2, 4])
  got = np.asarray(generate(model, params, prompt, 4, rng=None,
                            prompt_lengths_B=lengths, pad_id=-1))
  for b, n in enumerate(lengths):
    alone = greedy_by_full_forward(model, params, prompt[b:b + 1, :n], 4)[0]
    np.testing.assert_array_equal(got[b, :n + 4], alone)
    assert (got[b, n + 4:] == -1).all()


def test_too_long_requests_fail(lm):
  model, params, prompt = lm  # max_seq_len 64, prompt length 5
  with pytest.raises(GenerateError, match="max_seq_len=64"):
    generate(model, params, prompt, 60, rng=None)
  with pytest.raises(GenerateError, match="cache_len=10"):
    generate(model, params, prompt, 8, rng=None, cache_len=10)
  with pytest.raises(ValueError, match="max_seq_len=64"):
    init_cache(model, 1, 65)
  _, cache = jax.jit(prefill, static_argnums=0)(
      model, params, prompt, init_cache(model, 3, 8))
  with pytest.raises(ValueError, match="max_len=8"):
    prefill(model, params, prompt, cache)  # checked before running


def test_filters_and_sample():
  logits_BV = jnp.log(jnp.array([[0.5, 0.2, 0.2, 0.1], [0.1, 0.6, 0.05, 0.25]]))
  kept = lambda x: np.isfinite(np.asarray(x))
  np.testing.assert_array_equal(kept(top_k_filter(logits_BV, 2)),
                                [[1, 1, 1, 0], [0, 1, 0, 1]])  # a tie keeps 3
  np.testing.assert_array_equal(kept(top_p_filter(logits_BV, 0.6)),
                                [[1, 1, 0, 0], [0, 1, 0, 0]])
  np.testing.assert_array_equal(kept(top_p_filter(logits_BV, 0.45)),
                                [[1, 0, 0, 0], [0, 1, 0, 0]])
  np.testing.assert_array_equal(kept(top_p_filter(logits_BV, 0.9)),
                                [[1, 1, 1, 0], [1, 1, 0, 1]])
  np.testing.assert_array_equal(sample(logits_BV, None), [0, 1])
  # Top-k = 1 and a tiny nucleus leave only the argmax.
  random_BV = jax.random.normal(jax.random.key(1), (64, 97))
  for kw in (dict(top_k=1), dict(top_p=1e-6)):
    got = sample(random_BV, jax.random.key(2), temperature=1.0, **kw)
    np.testing.assert_array_equal(got, jnp.argmax(random_BV, -1))
  # Sampled frequencies follow the renormalised nucleus.
  draw = jax.jit(jax.vmap(lambda k: sample(logits_BV, k, 1.0, top_p=0.8)))
  tokens_NB = np.asarray(draw(jax.random.split(jax.random.key(0), 4000)))
  freq = np.bincount(tokens_NB[:, 1], minlength=4) / 4000
  np.testing.assert_allclose(freq, [0, 0.6 / 0.85, 0, 0.25 / 0.85], atol=0.03)
