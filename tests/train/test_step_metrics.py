"""The train step's gradient norms per parameter group."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from iiet_jax.train.build import build_training
from training import batches, tiny_training_config


@pytest.mark.parametrize("arch,tied,groups", [
    ("iiet", True, {"embedding", "history", "norms", "blocks"}),
    ("pcformer", False, {"embedding", "history", "norms", "blocks"}),
    ("transformer", True, {"embedding", "norms", "blocks"})])
def test_group_norms_split_the_global_norm(arch, tied, groups):
  cfg = tiny_training_config(arch, tie_embeddings=tied)
  training = build_training(cfg, devices=jax.devices()[:1])
  state = training.init_state(0)
  _, metrics = training.train_step(state, batches(cfg, 1)[0])
  metrics = jax.device_get(metrics)
  found = {k.split("/", 1)[1] for k in metrics if k.startswith("grad_norm/")}
  assert found == groups
  # The groups partition the parameters: their squares add up to the whole.
  total = sum(float(metrics[f"grad_norm/{g}"]) ** 2 for g in groups)
  np.testing.assert_allclose(total, float(metrics["grad_norm"]) ** 2,
                             rtol=1e-5)
  assert all(float(metrics[f"grad_norm/{g}"]) > 0 for g in groups)


def test_history_group_is_the_mix_matrices_alone():
  """Recomputed by hand from the gradient of W and Wc."""
  cfg = tiny_training_config("iiet")
  training = build_training(cfg, devices=jax.devices()[:1])
  state = training.init_state(0)
  batch = batches(cfg, 1)[0]
  from iiet_jax.train.loss import batch_sums
  def loss(params):
    sums = batch_sums(training.model, params, batch)
    return sums["nll"] / sums["count"]
  grads = jax.grad(loss)(state.params)["decoder"]["history"]
  expected = np.sqrt(sum(float(np.sum(np.square(g)))
                         for g in jax.tree.leaves(grads)))
  _, metrics = training.train_step(state, batch)
  np.testing.assert_allclose(float(metrics["grad_norm/history"]), expected,
                             rtol=1e-4)
