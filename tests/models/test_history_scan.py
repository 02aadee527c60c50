"""The lean history scan (models/history_scan.py): gradients equal the
plain-JAX reference, runs of equal r_t, and what the forward keeps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from support import init_params, random_tokens, small_config
from iiet_jax.models import build_model
from iiet_jax.models.history_scan import _Residuals, history_scan
from iiet_jax.models.iiet import IIETLayer
from iiet_jax.train.loss import next_token_loss

slow = pytest.mark.slow
CASES = [
    pytest.param("iiet", dict(iterations=2), "none", marks=slow),
    ("iiet", dict(iterations=(3, 0, 1, 1)), "none"),
    ("iiet", dict(iterations=(2, 2, 0, 1)), "full"),
    pytest.param("iiet", dict(iterations=(1, 1, 1, 1)), "save_dots",
                 marks=slow),
    pytest.param("pcformer", dict(), "none", marks=slow),
    ("pcformer", dict(pc_order=4), "full"),
]


def _grads(loss_fn, params):
  return jax.jit(jax.value_and_grad(loss_fn))(params)


@pytest.mark.parametrize("arch,overrides,policy", CASES)
def test_gradients_equal_reference(arch, overrides, policy):
  cfg = small_config(arch=arch, num_layers=4, remat_policy=policy,
                     **overrides)
  tokens = random_tokens(cfg, 2, 12, seed=5)
  params = init_params(cfg, tokens)
  model = build_model(cfg)

  def flax_loss(p):
    return next_token_loss(model.apply({"params": p}, tokens), tokens)[0]

  def reference_loss(p):
    logits = reference.forward(cfg, tokens, reference.from_flax(p, cfg))
    return next_token_loss(logits, tokens)[0]

  loss, grads = _grads(flax_loss, params)
  want_loss, want = _grads(reference_loss, params)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  flat, _ = jax.tree_util.tree_flatten_with_path(grads)
  flat_want = jax.tree.leaves(want)
  for (path, g), w in zip(flat, flat_want):
    scale = float(np.max(np.abs(w))) + 1e-12
    err = float(np.max(np.abs(np.asarray(g) - np.asarray(w)))) / scale
    assert err <= 2e-5, (jax.tree_util.keystr(path), err)
  # The history matrices get gradients only in their lower triangle.
  w_grad = np.asarray(grads["decoder"]["history"]["weight"])
  assert np.all(np.triu(w_grad, 1) == 0.0)
  assert np.any(np.tril(w_grad) != 0.0)


def test_runs_group_equal_iterations():
  cfg = small_config(num_layers=6, iterations=(3, 3, 1, 0, 0, 1))
  assert IIETLayer.runs(cfg) == [
      (0, 2, {"num_iterations": 3}), (2, 3, {"num_iterations": 1}),
      (3, 5, {"num_iterations": 0}), (5, 6, {"num_iterations": 1})]
  uniform = small_config(num_layers=3, iterations=2)
  assert IIETLayer.runs(uniform) == [(0, 3, {"num_iterations": 2})]


def _toy_core(p, xs, shared, h, mixes, positions, segment_ids):
  del shared, positions, segment_ids
  u = mixes[0] + xs["w_self"] * h
  s = jnp.tanh(u @ p["w"])
  return mixes[1] + xs["c_self"] * s, s


def _toy_inputs(L=5, D=3):
  keys = jax.random.split(jax.random.key(0), 4)
  params = {"w": jax.random.normal(keys[0], (L, D, D)) / np.sqrt(D)}
  strict = np.arange(L + 1)[None, :] < np.arange(1, L + 1)[:, None]
  mix = jax.random.normal(keys[1], (L, 2, L + 1)) * strict[:, None]
  xs = {"w_self": jax.random.normal(keys[2], (L,)),
        "c_self": jnp.ones((L,))}
  h0 = jax.random.normal(keys[3], (2, 4, D))
  return params, mix, xs, h0


def _toy_unrolled(params, mix, xs, h0):
  """The same stack written as a plain loop over a Python list of states."""
  states, h = [h0], h0
  for i in range(mix.shape[0]):
    mixes = jnp.stack([sum(mix[i, k, j] * states[j]
                           for j in range(len(states))) for k in (0, 1)])
    xs_i = jax.tree.map(lambda a: a[i], xs)
    h, s = _toy_core(jax.tree.map(lambda a: a[i], params), xs_i, None, h,
                     mixes, None, None)
    states.append(s)
  return h


@pytest.mark.parametrize("splits", [(0, 5), (0, 2, 3, 5)])
@pytest.mark.parametrize("policy", [None, jax.checkpoint_policies.nothing_saveable])
def test_toy_stack_gradients_equal_loop(splits, policy):
  """Independent of the models: the custom VJP against autodiff of a loop,
  with the layers split into several runs."""
  params, mix, xs, h0 = _toy_inputs()
  runs = [(a, b, _toy_core) for a, b in zip(splits[:-1], splits[1:])]

  def lean(*args):
    return jnp.sum(jnp.sin(history_scan(runs, policy, args[0], args[1],
                                        args[2], None, args[3], None, None)))

  def loop(*args):
    return jnp.sum(jnp.sin(_toy_unrolled(*args)))

  got = jax.jit(jax.value_and_grad(lean, argnums=(0, 1, 2, 3)))(
      params, mix, xs, h0)
  want = jax.value_and_grad(loop, argnums=(0, 1, 2, 3))(params, mix, xs, h0)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_full_remat_keeps_only_inputs():
  """Under the 'full' policy the core's residuals are all its own inputs,
  so nothing but h and the final state buffer is kept per layer."""
  params, mix, xs, h0 = _toy_inputs()
  layouts = []
  split = _Residuals.split

  def spy(self, vjp_fn, inputs):
    stacked = split(self, vjp_fn, inputs)
    layouts.append(self)
    return stacked

  _Residuals.split = spy
  try:
    for policy in (jax.checkpoint_policies.nothing_saveable, None):
      jax.grad(lambda p: jnp.sum(history_scan(
          [(0, 5, _toy_core)], policy, p, mix, xs, None, h0, None,
          None)))(params)
  finally:
    _Residuals.split = split
  full, none = layouts
  assert all(kind == "input" for kind, _ in full.slots), full.slots
  assert any(kind == "stacked" for kind, _ in none.slots), none.slots
