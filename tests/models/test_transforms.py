"""Contracts that must hold under every transformation of the models."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import (apply, init_params, random_tokens, rel_err, small_config,
                      stack_layers, with_)
from iiet_jax.models import LanguageModel, build_model
from iiet_jax.train.loss import next_token_loss

ARCHS = {
    "transformer": dict(arch="transformer"),
    "iiet": dict(arch="iiet", iterations=(2, 0, 1)),
    "pcformer": dict(arch="pcformer", num_layers=2),
    "pcformer4": dict(arch="pcformer", pc_order=4, num_layers=2),
}


def loss_and_grads(cfg, params, tokens):
  model = build_model(cfg)

  def loss_fn(p):
    return next_token_loss(model.apply({"params": p}, tokens), tokens)[0]

  return jax.jit(jax.value_and_grad(loss_fn))(params)


@pytest.mark.parametrize("name", ARCHS)
def test_causal(name):
  """d logits[i] / d embeddings[j] is exactly zero for j > i, nonzero j <= i."""
  cfg = small_config(**ARCHS[name])
  T = 8
  tokens = random_tokens(cfg, 1, T)
  params = init_params(cfg, tokens)
  model = build_model(cfg)
  h0 = model.apply({"params": params}, tokens, method=LanguageModel.embed)
  f = lambda h: model.apply({"params": params}, h,
                            method=LanguageModel.logits_from_embeddings)
  logits, vjp = jax.vjp(f, h0)
  vjp = jax.jit(vjp)
  for i in range(T):
    cotangent = jnp.zeros_like(logits).at[:, i].set(1.0)
    (g,) = vjp(cotangent)
    norms = np.linalg.norm(np.asarray(g[0]), axis=-1)
    assert np.all(norms[i + 1:] == 0.0), (i, norms)
    assert np.all(norms[: i + 1] > 0.0), (i, norms)


@pytest.mark.parametrize("name", ARCHS)
def test_scanned_equals_unrolled(name):
  unrolled = small_config(scan_layers=False, **ARCHS[name])
  scanned = with_(unrolled, scan_layers=True)
  tokens = random_tokens(unrolled, 2, 12)
  params_u = init_params(unrolled, tokens)
  params_s = stack_layers(params_u, unrolled.num_layers)
  # Same tree as the scanned model builds itself.
  fresh = init_params(scanned, tokens, perturb=False)
  chex.assert_trees_all_equal_shapes(params_s, fresh)

  loss_u, grads_u = loss_and_grads(unrolled, params_u, tokens)
  loss_s, grads_s = loss_and_grads(scanned, params_s, tokens)
  np.testing.assert_allclose(apply(scanned, params_s, tokens),
                             apply(unrolled, params_u, tokens),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(loss_s, loss_u, rtol=1e-6)
  chex.assert_trees_all_close(grads_s, stack_layers(grads_u, unrolled.num_layers),
                              rtol=1e-4, atol=1e-6)


REMAT_CASES = [(name, policy, True) for name in ("transformer", "iiet", "pcformer")
               for policy in ("full", "save_dots", "save_names", "per_evaluation")]
REMAT_CASES += [pytest.param(name, policy, False, marks=pytest.mark.slow)
                for name in ("transformer", "iiet", "pcformer")
                for policy in ("full", "save_dots", "save_names", "per_evaluation")]


@pytest.mark.parametrize("name,policy,scan", REMAT_CASES)
def test_remat_equals_no_remat(name, policy, scan):
  base = small_config(remat_policy="none", scan_layers=scan, **ARCHS[name])
  names = ("query_proj", "block_out") if policy == "save_names" else ()
  remat = with_(base, remat_policy=policy, remat_save_names=names)
  tokens = random_tokens(base, 2, 10)
  params = init_params(base, tokens)
  chex.assert_trees_all_equal_shapes(params, init_params(remat, tokens))
  loss_a, grads_a = loss_and_grads(base, params, tokens)
  loss_b, grads_b = loss_and_grads(remat, params, tokens)
  np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
  chex.assert_trees_all_close(grads_b, grads_a, rtol=1e-5, atol=1e-7)


class JitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_equals_no_jit(self):
    for name in ("transformer", "iiet", "pcformer"):
      cfg = small_config(**ARCHS[name])
      tokens = random_tokens(cfg, 2, 8)
      params = init_params(cfg, tokens)
      model = build_model(cfg)
      fn = self.variant(lambda p, t: model.apply({"params": p}, t))
      reference = jax.jit(lambda p, t: model.apply({"params": p}, t))
      np.testing.assert_allclose(fn(params, tokens), reference(params, tokens),
                                 rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["transformer", "iiet", "pcformer"])
def test_bfloat16_compute_close_to_float32(name):
  """bf16 compute keeps float32 params and logits, and stays near float32."""
  cfg32 = small_config(**ARCHS[name])
  cfg16 = with_(cfg32, dtype="bfloat16")
  tokens = random_tokens(cfg32, 2, 16)
  params = init_params(cfg32, tokens, perturb=False)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits16 = apply(cfg16, params, tokens)
  assert logits16.dtype == jnp.float32
  assert rel_err(logits16, apply(cfg32, params, tokens)) < 0.05
