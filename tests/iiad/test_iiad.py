"""IIAD: iteration influence (against the reference) and selection rules."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from support import random_tokens, small_config
from iiet_jax.iiad import influence as inf
from iiet_jax.iiad import selection as sel
from iiet_jax.models import build_model


def _model(**kw):
  cfg = small_config(**kw)
  model = build_model(cfg)
  tokens = random_tokens(cfg, 2, 12)
  params = nn.unbox(model.init(jax.random.key(0), tokens)["params"])
  return cfg, model, params, tokens


def _reference_influence(cfg, params, tokens):
  trace = []
  ref.iiet(tokens, ref.from_flax(params, cfg), cfg.num_heads, cfg.iterations,
           trace=trace)
  out = np.full((cfg.num_layers, cfg.max_iterations), np.nan)
  for t, states in enumerate(trace):
    for k in range(1, len(states)):
      change = jnp.linalg.norm(states[k] - states[k - 1], axis=-1)
      out[t, k - 1] = float(jnp.mean(
          change / jnp.linalg.norm(states[k - 1], axis=-1)))
  return out


@pytest.mark.parametrize("scan,iterations", [(True, 3), (False, 3),
                                             (True, (2, 0, 3)),
                                             (False, (1, 3, 0))])
def test_state_change_matches_the_reference(scan, iterations):
  cfg, model, params, tokens = _model(scan_layers=scan, iterations=iterations)
  got = inf.measure(model, params, [{"tokens": tokens}])
  want = _reference_influence(cfg, params, tokens)
  assert got.tokens == tokens.size
  np.testing.assert_array_equal(np.isnan(got.state_change), np.isnan(want))
  ok = ~np.isnan(want)
  np.testing.assert_allclose(got.state_change[ok], want[ok], rtol=1e-4)
  assert (want[ok] > 1e-5).all()  # a random model moves at every iteration


def test_fixed_point_iterations_have_zero_influence():
  cfg, model, params, tokens = _model(iterations=3)
  # W[t, t] = 0: an iteration's input no longer depends on the state it
  # updates, so every iteration after the first returns its input state.
  w = params["decoder"]["history"]["weight"]
  params["decoder"]["history"]["weight"] = w * (1 - jnp.eye(w.shape[0]))
  got = inf.measure(model, params, [{"tokens": tokens}]).state_change
  assert (got[:, 0] > 1e-3).all()
  assert (got[:, 1:] == 0).all()
  assert sel.by_threshold(got, 1e-6) == (1, 1, 1)


def test_ablation_is_the_loss_increase_of_stopping_early():
  cfg, model, params, tokens = _model(iterations=2)
  got = inf.measure(model, params, [{"tokens": tokens}], ablation=True)
  full = inf.mean_loss(model, params, [{"tokens": tokens}])
  cut = build_model(small_config(iterations=(2, 0, 2)))
  np.testing.assert_allclose(
      got.ablation[1, 0], inf.mean_loss(cut, params, [{"tokens": tokens}])
      - full, rtol=1e-5, atol=1e-7)
  assert got.ablation.shape == (3, 2) and not np.isnan(got.ablation).any()


def test_only_iiet_teachers_are_measured():
  _, model, params, tokens = _model(arch="pcformer")
  with pytest.raises(inf.InfluenceError, match="apply to IIET.*'pcformer'"):
    inf.measure(model, params, [{"tokens": tokens}])


INFLUENCE = np.array([[0.5, 0.2, 0.05],
                      [0.3, 0.01, 0.2],     # a later iteration above tau
                      [0.02, 0.4, 0.4],     # is not kept after a gap
                      [0.9, 0.8, np.nan]])  # a layer with r_t = 2


def test_threshold_keeps_prefixes_and_is_monotone():
  assert sel.by_threshold(INFLUENCE, 0.1) == (2, 1, 0, 2)
  assert sel.by_threshold(INFLUENCE, 0.0) == (3, 3, 3, 2)
  previous = None
  for tau in np.linspace(0, 0.99, 50):
    counts = sel.by_threshold(INFLUENCE, tau)
    if previous is not None:
      assert all(a <= b for a, b in zip(counts, previous))
    previous = counts


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.75, 1.0])
def test_budget_keeps_at_least_its_share_with_the_largest_tau(fraction):
  counts, tau = sel.by_budget(INFLUENCE, fraction)
  assert sum(counts) >= np.ceil(fraction * 11 - 1e-9)
  assert counts == sel.by_threshold(INFLUENCE, tau)
  larger = [v for v in INFLUENCE[~np.isnan(INFLUENCE)] if v > tau]
  for t in larger:  # any larger tau would keep too few
    assert sum(sel.by_threshold(INFLUENCE, t)) < np.ceil(fraction * 11 - 1e-9)


@pytest.mark.parametrize("tau", [-0.1, 1.0, 2.0])
def test_tau_outside_the_unit_interval_is_refused(tau):
  with pytest.raises(sel.SelectionError, match=f"tau={tau} is outside"):
    sel.by_threshold(INFLUENCE, tau)


def test_budget_that_keeps_nothing_is_refused():
  with pytest.raises(sel.SelectionError, match="budget=0.0 of 11 .*nothing"):
    sel.by_budget(INFLUENCE, 0.0)
  with pytest.raises(sel.SelectionError, match=r"must lie in \(0, 1\]"):
    sel.by_budget(INFLUENCE, 1.5)
  assert sum(sel.by_budget(INFLUENCE, 0.01)[0]) >= 1
  cfg = small_config(iterations=(1, 1, 1))   # three IIET layers
  assert sel.block_evaluations(cfg, (3, 0, 2)) == 8
  assert sel.block_evaluations(cfg) == 6
