"""Model zoo: Transformer++, IIET and PCformer in flax.linen (SPEC.md 1-4)."""

from __future__ import annotations

from typing import Any, Mapping

from iiet_jax.models.config import ConfigError, ModelConfig
from iiet_jax.models.lm import DECODERS, LanguageModel


def build_model(config: ModelConfig | Mapping[str, Any]) -> LanguageModel:
  """A `LanguageModel` from a `ModelConfig` or the `model` block of a config."""
  if not isinstance(config, ModelConfig):
    config = ModelConfig.from_dict(config)
  return LanguageModel(config)


__all__ = ["ConfigError", "DECODERS", "LanguageModel", "ModelConfig",
           "build_model"]
