"""Model zoo: Transformer++, IIET and PCformer in flax.linen (SPEC.md 1-4)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from iiet_jax.models import registry
from iiet_jax.models.config import ConfigError, ModelConfig
from iiet_jax.models.lm import LanguageModel
from iiet_jax.models.stack import unstack_layers


def build_model(config: ModelConfig | Mapping[str, Any]) -> LanguageModel:
  """A `LanguageModel` from a `ModelConfig` or the `model` block of a config."""
  if not isinstance(config, ModelConfig):
    config = ModelConfig.from_dict(config)
  return LanguageModel(config)


def for_inference(model: LanguageModel, params):
  """(model, params) to serve: an E-IIET (per-layer r_t) trained with
  scanned layers runs every layer for max(r_t) masked iterations there, so
  it is rebuilt with unrolled layers, where each layer runs only its own
  (docs/decode_bench.md: the masked scan saves nothing). Same function,
  same parameters; anything else is returned as it is."""
  cfg = model.config
  if (not registry.get(cfg.arch).implicit_iterations
      or cfg.uniform_iterations or not cfg.scan_layers):
    return model, params
  unrolled = dataclasses.replace(cfg, scan_layers=False)
  return build_model(unrolled), unstack_layers(params, cfg.num_layers)


__all__ = ["ConfigError", "LanguageModel", "ModelConfig", "build_model",
           "for_inference", "registry", "unstack_layers"]
