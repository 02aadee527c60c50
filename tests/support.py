"""Model helpers shared by the tests: small configs, tokens, parameters."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from iiet_jax.models import ModelConfig, build_model


def small_config(**overrides) -> ModelConfig:
  base = dict(arch="iiet", vocab_size=97, num_layers=3, d_model=32,
              num_heads=4, d_ff=48, dtype="float32", remat_policy="none",
              max_seq_len=64)
  base.update(overrides)
  return ModelConfig(**base)


def random_tokens(cfg: ModelConfig, batch: int, length: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, length)),
                     jnp.int32)


def init_params(cfg: ModelConfig, tokens, seed: int = 0, perturb: bool = True):
  """Unboxed params; with `perturb`, every leaf moves off its structured init
  (unit norms, averaging history, alpha = 0.5) so index mistakes show."""
  model = build_model(cfg)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(seed), tokens))["params"]
  if not perturb:
    return params
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [x + 0.1 * jax.random.normal(k, x.shape, x.dtype)
            for x, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, leaves)


def apply(cfg: ModelConfig, params, tokens, **kwargs):
  return jax.jit(build_model(cfg).apply)({"params": params}, tokens, **kwargs)


def stack_layers(params, num_layers: int):
  """Unrolled layout (`layers_0..`) -> scanned layout (`layers`, stacked)."""
  params = jax.tree.map(lambda x: x, params)  # shallow copy of the dicts
  stack = params["decoder"]["stack"]
  per_layer = [stack.pop(f"layers_{i}") for i in range(num_layers)]
  stack["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
  return params


def with_(cfg: ModelConfig, **changes) -> ModelConfig:
  return dataclasses.replace(cfg, **changes)


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))
