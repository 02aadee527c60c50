"""Iteration influence of an IIET model (SPEC.md section 5, step 1).

State change:  I[t, k] = mean over tokens of ||S_t^(k) - S_t^(k-1)|| /
               ||S_t^(k-1)||, for layer t and iteration k = 1..r_t, where
               S_t^(0) is the predictor's state. One forward pass per batch
               reads every S_t^(k) from the model's "intermediates".
Ablation:      A[t, k] = loss(layer t stops after k-1 iterations) - loss(full
               model), one forward pass per (t, k).
Entries past a layer's own r_t are NaN: those iterations do not run.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from iiet_jax.models import LanguageModel, ModelConfig, build_model, registry
from iiet_jax.train import loss as loss_lib
from iiet_jax.errors import UserError


class InfluenceError(UserError, ValueError):
  """A model or request the influence measure does not apply to."""

  kind = "Influence"


def check_teacher(cfg: ModelConfig) -> None:
  if not registry.get(cfg.arch).implicit_iterations:
    raise InfluenceError(
        f"Iteration influence and IIAD apply to IIET models; this one is "
        f"model.arch={cfg.arch!r}. Train a model=iiet run (two-stage or not) "
        f"and measure that.")
  if not cfg.max_iterations:
    raise InfluenceError("The model runs no implicit iterations "
                         f"(iterations={cfg.iterations}); nothing to measure.")


def iteration_states(model: LanguageModel, params, batch) -> jax.Array:
  """S_t^(k) for every layer t and k = 0..max r as float32 [L, K, B, T, D].

  Layers with fewer iterations repeat their last state (under a scanned
  stack the model does exactly that itself)."""
  cfg = model.config
  _, state = loss_lib.forward(model, params, batch, mutable=["intermediates"])
  stack = state["intermediates"]["decoder"]["stack"]
  if cfg.scan_layers:
    layer = stack["layers"]["layer"]
    pred_LBTD = layer["predictor"][0]
    if "iterates" not in layer:
      return pred_LBTD[:, None].astype(jnp.float32)
    iters_LRBTD = layer["iterates"][0]
    return jnp.concatenate([pred_LBTD[:, None], iters_LRBTD],
                           axis=1).astype(jnp.float32)
  per_layer = []
  for t in range(cfg.num_layers):
    layer = stack[f"layers_{t}"]["layer"]
    states = [layer["predictor"][0]]
    if "iterates" in layer:
      states += list(layer["iterates"][0])
    states += [states[-1]] * (cfg.max_iterations + 1 - len(states))
    per_layer.append(jnp.stack(states))
  return jnp.stack(per_layer).astype(jnp.float32)


def _token_mask(batch) -> jax.Array:
  mask = batch.get("mask")
  if mask is None:
    mask = jnp.ones(batch["tokens"].shape, jnp.float32)
  return mask.astype(jnp.float32)


def state_change_sums(model: LanguageModel, params, batch):
  """Per (layer, iteration) sums of the relative change, and token count."""
  s_LKBTD = iteration_states(model, params, batch)
  diff = jnp.linalg.norm(s_LKBTD[:, 1:] - s_LKBTD[:, :-1], axis=-1)
  base = jnp.linalg.norm(s_LKBTD[:, :-1], axis=-1)
  rel_LRBT = diff / jnp.maximum(base, 1e-12)
  mask_BT = _token_mask(batch)
  return jnp.sum(rel_LRBT * mask_BT, axis=(-2, -1)), jnp.sum(mask_BT)


@dataclasses.dataclass
class Influence:
  state_change: np.ndarray          # [L, R], NaN past r_t
  ablation: np.ndarray | None       # [L, R] loss increase, or None
  iterations: tuple[int, ...]       # the teacher's r_t
  tokens: int

  def to_json(self) -> dict:
    clean = lambda a: None if a is None else [
        [None if np.isnan(v) else float(v) for v in row] for row in a]
    return {"state_change": clean(self.state_change),
            "ablation": clean(self.ablation),
            "iterations": list(self.iterations), "tokens": self.tokens}


def _past_r(values: np.ndarray, iterations) -> np.ndarray:
  values = np.array(values, dtype=np.float64)
  for t, r in enumerate(iterations):
    values[t, r:] = np.nan
  return values


def mean_loss(model: LanguageModel, params, batches) -> float:
  sums = jax.jit(lambda p, b: loss_lib.batch_sums(model, p, b))
  return loss_lib.evaluate(sums, params, batches)["loss"]


def measure(model: LanguageModel, params, batches: Iterable[dict],
            ablation: bool = False, progress=None) -> Influence:
  """Influence of every iteration over `batches` (dicts of [B, T] arrays)."""
  cfg = model.config
  check_teacher(cfg)
  batches = list(batches)
  if not batches:
    raise InfluenceError("No batches to measure influence on.")
  step = jax.jit(lambda p, b: state_change_sums(model, p, b))
  total, tokens = 0.0, 0.0
  for batch in batches:
    sums, count = step(params, batch)
    total = total + np.asarray(sums, np.float64)
    tokens += float(count)
  state_change = _past_r(total / max(tokens, 1.0), cfg.iterations)
  ablated = None
  if ablation:
    full = mean_loss(model, params, batches)
    ablated = np.full(state_change.shape, np.nan)
    for t, r in enumerate(cfg.iterations):
      for k in range(1, r + 1):
        counts = list(cfg.iterations)
        counts[t] = k - 1
        cut = build_model(dataclasses.replace(cfg, iterations=tuple(counts)))
        ablated[t, k - 1] = mean_loss(cut, params, batches) - full
        if progress:
          progress(t, k)
  return Influence(state_change, ablated, cfg.iterations, int(tokens))
