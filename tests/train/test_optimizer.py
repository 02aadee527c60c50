"""Optimizer recipe, loss masking and the eval step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from support import init_params, random_tokens, small_config
from iiet_jax.train.loss import next_token_loss, next_token_sums
from iiet_jax.train.optimizer import decay_mask, make_optimizer
from training import tiny_training_config


def test_weight_decay_only_on_block_and_head_matrices():
  cfg = small_config(arch="pcformer", tie_embeddings=False)
  params = init_params(cfg, random_tokens(cfg, 1, 4), perturb=False)
  mask = decay_mask(params)
  flat = {jax.tree_util.keystr(p): m
          for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]}
  decayed = sorted(k.rsplit("'", 2)[-2] for k, m in flat.items() if m)
  assert decayed == sorted(["down", "gate", "head", "key", "out", "query",
                            "up", "value"])
  for key, m in flat.items():
    if any(s in key for s in ("scale", "bias", "history", "alpha",
                              "embedding")):
      assert not m, key


def test_adamw_recipe_values():
  """One step by hand: Adam's first step moves each weight by lr * sign(g);
  decayed weights also shrink by lr * wd * w."""
  cfg = tiny_training_config()
  opt = cfg.optimizer
  tx, schedule = make_optimizer(opt, total_steps=100)
  assert float(schedule(0)) == 0.0
  assert float(schedule(opt.warmup_steps)) == pytest.approx(opt.peak_lr)
  assert float(schedule(100)) == pytest.approx(opt.peak_lr * opt.end_lr_ratio)
  params = {"query": jnp.full((2, 2), 2.0), "scale": jnp.full((2,), 2.0)}
  grads = {"query": jnp.full((2, 2), 1e-3), "scale": jnp.full((2,), -1e-3)}
  state = tx.init(params)
  _, state = tx.update(grads, state, params)            # step 0: lr 0
  updates, _ = tx.update(grads, state, params)          # step 1: peak lr
  lr = float(schedule(1))
  # Bias-corrected Adam after two equal gradients is again sign(g).
  np.testing.assert_allclose(updates["query"], -lr * (1 + 0.1 * 2.0),
                             rtol=1e-4)
  np.testing.assert_allclose(updates["scale"], lr, rtol=1e-4)


def test_clipping_to_global_norm_one():
  cfg = tiny_training_config()
  tx, _ = make_optimizer(cfg.optimizer, total_steps=100)
  params = {"w": jnp.zeros((4,))}
  state = tx.init(params)
  clipped, _ = tx.update({"w": jnp.full((4,), 100.0)}, state, params)
  # With lr 0 at step 0 the update is 0; check the clip stage directly.
  clip = optax.clip_by_global_norm(cfg.optimizer.clip_norm)
  g, _ = clip.update({"w": jnp.full((4,), 100.0)}, clip.init(params))
  assert float(optax.global_norm(g)) == pytest.approx(1.0)
  assert float(optax.global_norm(clipped)) == 0.0


def test_bfloat16_moments():
  cfg = tiny_training_config()
  cfg.optimizer.moments_dtype = "bfloat16"
  tx, _ = make_optimizer(cfg.optimizer, total_steps=100)
  params = {"query": jnp.ones((3, 3))}
  state = tx.init(params)
  dtypes = {x.dtype for x in jax.tree.leaves(state)
            if jnp.issubdtype(x.dtype, jnp.floating)}
  assert dtypes == {jnp.dtype(jnp.bfloat16)}
  _, state = tx.update({"query": jnp.ones((3, 3))}, state, params)
  assert {x.dtype for x in jax.tree.leaves(state)
          if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.bfloat16)}
  cfg.optimizer.moments_dtype = "float8"
  with pytest.raises(ValueError, match="moments_dtype='float8'"):
    make_optimizer(cfg.optimizer, total_steps=100)


def test_schedule_needs_steps_after_warmup():
  cfg = tiny_training_config()
  with pytest.raises(ValueError, match="total_steps=1 must exceed"):
    make_optimizer(cfg.optimizer, total_steps=1)


def test_loss_masks_padding_and_segment_boundaries():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(1, 6, 5)), jnp.float32)
  tokens = jnp.asarray([[1, 2, 3, 4, 0, 0]])
  mask = jnp.asarray([[1, 1, 1, 1, 0, 0]])
  segments = jnp.asarray([[1, 1, 2, 2, 0, 0]])
  sums = next_token_sums(logits, tokens, mask, segments)
  # Targets: 2 (same segment), 3 (crosses 1->2: dropped), 4 (same), pads.
  logp = jax.nn.log_softmax(logits[0], -1)
  want = -(logp[0, 2] + logp[2, 4])
  assert float(sums["count"]) == 2.0
  np.testing.assert_allclose(sums["nll"], want, rtol=1e-6)
  loss, count = next_token_loss(logits, tokens, mask, segments)
  np.testing.assert_allclose(loss, want / 2, rtol=1e-6)
  logz = jax.nn.logsumexp(logits[0], -1)
  np.testing.assert_allclose(sums["z"], logz[0] ** 2 + logz[2] ** 2, rtol=1e-6)


def test_eval_step_sums_match_loss():
  from iiet_jax.train.build import build_training
  cfg = tiny_training_config("iiet", mesh=(2, 2, 2), preset="fsdp_tp")
  training = build_training(cfg)
  state = training.init_state(0)
  tokens = np.asarray(random_tokens(small_config(vocab_size=128), 8, 16))
  sums = training.eval_step(state.params, {"tokens": tokens})
  logits = training.model.apply({"params": jax.device_get(state.params)},
                                jnp.asarray(tokens))
  loss, count = next_token_loss(logits, jnp.asarray(tokens))
  np.testing.assert_allclose(sums["nll"] / sums["count"], loss, rtol=1e-5)
  assert float(sums["count"]) == 8 * 15
