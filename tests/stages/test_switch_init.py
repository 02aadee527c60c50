"""The switch-time history init (stages/switch_init.py) and the history LR."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import reference as ref
from iiet_jax import stages
from iiet_jax.stages import pretrain, switch_init
from iiet_jax.train import merge as merge_lib
from iiet_jax.train.build import build_training
from training import batches, read_metrics, run_config, tiny_training_config


def _switch_cfg(history="inherit", norm="unit", scale=1.0):
  return ml_collections.ConfigDict(dict(history_init=history, norm_init=norm,
                                        fit_batches=1,
                                        history_lr_scale=scale))


def _leaves(tree):
  return {k: np.asarray(v) for k, v in merge_lib.leaf_paths(tree).items()}


def _trained_transformer(steps=3):
  cfg = tiny_training_config("transformer")
  training = build_training(cfg, devices=jax.devices()[:1])
  state = training.init_state(0)
  for batch in batches(cfg, steps):
    state, _ = training.train_step(state, batch)
  return cfg, training, state


@pytest.mark.parametrize("arch", ["iiet", "pcformer"])
def test_inherit_is_transformer_with_a_layer_norm_after_each_block(arch):
  """With W[t, t-1] = 1, Wc = I (and PCformer's alpha = 0), every
  iteration re-evaluates B_t at h_{t-1}: h_t = LNc_t(B_t(h_{t-1})),
  derived here with the plain-JAX reference blocks."""
  cfg, _, state = _trained_transformer()
  cfg_new = cfg.copy_and_resolve_references()
  cfg_new.model.arch = arch
  new = build_training(cfg_new, devices=jax.devices()[:1])
  fresh = new.init_state(1)
  switched, report = pretrain.switch(state, fresh, new.model.config,
                                     _switch_cfg())
  assert report["history_init"] == "inherit"
  params = jax.device_get(switched.params)
  P = ref.from_flax(params, new.model.config)
  tokens = batches(cfg, 1, seed=3)[0]["tokens"]
  positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  h = P["embedding"][tokens]
  for p, (g, b) in zip(P["layers"], P["LNc"]):
    h = ref.layer_norm(ref.block(h, p, cfg.model.num_heads, positions, None),
                       g, b)
  expected = ref._head(h, P)
  got = new.model.apply({"params": params}, jnp.asarray(tokens))
  np.testing.assert_allclose(got, expected, atol=2e-4, rtol=2e-4)
  w, wc = np.asarray(P["W"]), np.asarray(P["Wc"])
  L = cfg.model.num_layers
  for t in range(1, L + 1):
    assert w[t, t - 1] == 1 and w[t].sum() == 1 and wc[t, t] == 1
  np.testing.assert_array_equal(wc, np.eye(L + 1))


def test_norm_fit_is_the_per_feature_least_squares_line():
  rng = np.random.default_rng(0)
  # Tokens of very different scale, as in a trained residual stream.
  x = rng.normal(size=(2, 6, 8)) * rng.uniform(0.2, 5.0, (2, 6, 1)) + 0.3
  weights = (rng.random((2, 6)) < 0.8).astype(np.float32)
  sums = jax.device_get(switch_init.norm_sums([jnp.asarray(x, jnp.float32)],
                                              jnp.asarray(weights), 1e-5))
  gain, bias = switch_init.fit_norms(sums)
  keep = weights.reshape(-1) > 0
  flat = x.reshape(-1, 8)[keep]
  n = (flat - flat.mean(-1, keepdims=True)) / np.sqrt(
      flat.var(-1, keepdims=True) + 1e-5)
  for d in range(8):
    design = np.stack([n[:, d], np.ones(len(n))], 1)
    (g, b), *_ = np.linalg.lstsq(design, flat[:, d], rcond=None)
    np.testing.assert_allclose([gain[0, d], bias[0, d]], [g, b], rtol=1e-3,
                               atol=1e-4)


def test_switch_with_norm_fit_sets_documented_values_and_keeps_the_rest():
  cfg, old, state = _trained_transformer()
  cfg_new = cfg.copy_and_resolve_references()
  cfg_new.model.arch = "iiet"
  new = build_training(cfg_new, devices=jax.devices()[:1])
  fresh = new.init_state(1)
  batch = batches(cfg, 1, seed=9)[0]
  fn = jax.jit(switch_init.sums_fn(old.model, 1e-5))
  calls = []

  def residual_sums(params):
    calls.append(1)
    return switch_init.accumulate(lambda b: fn(params, b), [batch])

  switched, report = pretrain.switch(state, fresh, new.model.config,
                                     _switch_cfg("average", "fit"),
                                     residual_sums)
  assert calls == [1] and report["fit_tokens"] == batch["tokens"].size
  before, after = _leaves(state.params), _leaves(switched.params)
  for path, value in before.items():
    np.testing.assert_array_equal(after[path], value)  # bit for bit
  for path, value in _leaves(state.opt_state).items():
    np.testing.assert_array_equal(_leaves(switched.opt_state)[path], value)
  # average: W and Wc keep SPEC's init.
  init = _leaves(fresh.params)
  for name in ("decoder/history/weight", "decoder/history/weight_c"):
    np.testing.assert_array_equal(after[name], init[name])
  # The fit, recomputed here from the Transformer++'s own layer outputs.
  _, extra = old.model.apply({"params": state.params},
                             jnp.asarray(batch["tokens"]),
                             mutable=["intermediates"])
  states = switch_init.residual_states(extra["intermediates"])
  assert len(states) == cfg.model.num_layers
  for t, h in enumerate(states):
    flat = np.asarray(h).reshape(-1, h.shape[-1])
    n = (flat - flat.mean(-1, keepdims=True)) / np.sqrt(
        flat.var(-1, keepdims=True) + 1e-5)
    g = ((n * flat).mean(0) - n.mean(0) * flat.mean(0)) / n.var(0)
    b = flat.mean(0) - g * n.mean(0)
    for norm in ("predictor_norm", "corrector_norm"):
      prefix = f"decoder/stack/layers/layer/{norm}"
      np.testing.assert_allclose(after[f"{prefix}/scale"][t], g, rtol=2e-3,
                                 atol=2e-4)
      np.testing.assert_allclose(after[f"{prefix}/bias"][t], b, rtol=2e-3,
                                 atol=2e-4)


def test_history_lr_scale_scales_only_the_history_updates():
  cfg = tiny_training_config("iiet")
  cfg.optimizer.warmup_steps = 0
  results = {}
  for scale in (1.0, 10.0):
    cfg.optimizer.history_lr_scale = scale
    training = build_training(cfg, devices=jax.devices()[:1])
    state = training.init_state(0)
    start = _leaves(state.params)
    state, _ = training.train_step(state, batches(cfg, 1)[0])
    results[scale] = {k: v - start[k] for k, v in
                      _leaves(state.params).items()}
  history = [p for p in results[1.0] if "history" in p or "_norm/" in p
             and ("predictor" in p or "corrector" in p)]
  assert history
  for path, delta in results[1.0].items():
    if path in history:
      np.testing.assert_allclose(results[10.0][path], 10 * delta, rtol=1e-4,
                                 atol=1e-7)
    else:
      np.testing.assert_array_equal(results[10.0][path], delta)


def test_bad_switch_options_are_plan_errors():
  cfg = tiny_training_config("iiet")
  cfg.switch_at = 0.5
  for key, value, word in (("history_init", "newest", "history_init"),
                           ("norm_init", "learned", "norm_init"),
                           ("history_lr_scale", 0.0, "history_lr_scale")):
    bad = cfg.copy_and_resolve_references()
    bad.switch[key] = value
    with pytest.raises(pretrain.PlanError, match=word):
      pretrain.phases(bad)


# About 50 s; tests/train/test_loop.py resumes across the default switch.
@pytest.mark.slow
def test_resume_across_a_fitted_switch_is_exact(tmp_path):
  """The fit peeks the next batches and puts the iterator back."""
  cfg = run_config(tmp_path / "data", "iiet", total_steps=8, switch_at=0.5)
  cfg.switch.norm_init = "fit"
  full = stages.train(cfg, tmp_path / "full")
  straight = read_metrics(tmp_path / "full")[0]
  plain = cfg.copy_and_resolve_references()
  plain.switch.norm_init = "unit"
  stages.train(plain, tmp_path / "plain")
  # Same batches with or without the peek: the Transformer++ phase agrees.
  unfitted = read_metrics(tmp_path / "plain")[0]
  for step in range(1, 5):
    assert straight[step][-1] == unfitted[step][-1]
  # Resumed from the switch checkpoint (step 4): bit-identical losses.
  part = tmp_path / "part"
  part.mkdir()
  import shutil
  shutil.copytree(tmp_path / "full" / "checkpoints" / "4",
                  part / "checkpoints" / "4")
  resumed = stages.train(cfg, part)
  again = read_metrics(part)[0]
  assert resumed["steps"] == full["steps"] == 8
  for step in range(5, 9):
    assert again[step][-1] == straight[step][-1], step


@pytest.mark.parametrize("arch", ["iiet", "pcformer"])
def test_history_init_inherit_starts_a_from_scratch_run_as_the_switch_does(
    arch):
  """`history_init=inherit` with switch_at=0: the first phase's init hook
  sets W, Wc (and PCformer's alpha) as the inheriting switch does and
  leaves every other parameter at its random init."""
  cfg = tiny_training_config(arch)
  cfg.switch_at, cfg.history_init = 0.0, "inherit"
  (phase,) = pretrain.phases(cfg)
  training = build_training(cfg, devices=jax.devices()[:1])
  fresh = training.init_state(0)
  state, change = phase.init(fresh, training)
  assert change == "history inherit, norms unit"
  before, after = _leaves(fresh.params), _leaves(state.params)
  w, wc = switch_init.history_matrices(cfg.model.num_layers)
  np.testing.assert_array_equal(after["decoder/history/weight"], w)
  np.testing.assert_array_equal(after["decoder/history/weight_c"], wc)
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  expected = {"decoder/history/weight", "decoder/history/weight_c"}
  if arch == "pcformer":
    expected.add("decoder/alpha")
    assert float(after["decoder/alpha"][0]) == 0.0
  assert changed == expected
  # The SPEC default adds no hook.
  cfg.history_init = "average"
  assert pretrain.phases(cfg)[0].init is None


def test_history_init_errors_name_the_value_and_the_fix():
  cfg = tiny_training_config("iiet")
  cfg.switch_at, cfg.history_init = 0.0, "newest"
  with pytest.raises(pretrain.PlanError, match="history_init='newest'"):
    pretrain.phases(cfg)
  cfg = tiny_training_config("transformer")
  cfg.switch_at, cfg.history_init = 0.0, "inherit"
  with pytest.raises(pretrain.PlanError, match="has none; leave it"):
    pretrain.phases(cfg)


def test_history_init_runs_once_and_not_on_resume(tmp_path):
  cfg = run_config(tmp_path / "data", "iiet", total_steps=2)
  cfg.history_init = "inherit"
  stages.train(cfg, tmp_path / "run")
  cfg.total_steps = 4
  stages.train(cfg, tmp_path / "run")
  _, events = read_metrics(tmp_path / "run")
  inits = [e for e in events if e["event"].startswith("initialised")]
  assert [e["event"] for e in inits] == ["initialised: history inherit, "
                                         "norms unit"]
  assert any(e["event"].startswith("resumed from step 2") for e in events)
