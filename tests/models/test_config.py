"""Bad configurations fail at build time with messages naming key and fix."""

from __future__ import annotations

import pytest

from support import small_config
from iiet_jax.models import ConfigError, ModelConfig, build_model
from training import load_lm_config


@pytest.mark.parametrize("overrides,message", [
    (dict(d_model=30, num_heads=4), "d_model=30 is not divisible by "
                                    "model.num_heads=4"),
    (dict(d_model=36, num_heads=4), "RoPE"),
    (dict(iterations=(1, 2)), "has 2 entries"),
    (dict(iterations=(1, -1, 2)), "layer 1: -1"),
    (dict(iterations=-2), "must be >= 0"),
    (dict(arch="mamba"), "model.arch='mamba' is not an architecture"),
    (dict(pc_order=3), "pc_order=3"),
    (dict(remat_policy="sometimes"), "model.remat_policy='sometimes'"),
    (dict(remat_policy="save_names"), "needs model.remat_save_names"),
    (dict(remat_policy="save_names", remat_save_names=("qkv",)), "'qkv'"),
    (dict(dtype="float8"), "model.dtype='float8'"),
    (dict(num_layers=0), "model.num_layers=0 must be a positive integer"),
    (dict(num_heads=4, num_kv_heads=3), "model.num_heads=4 is not divisible "
                                        "by model.num_kv_heads=3"),
    (dict(num_heads=4, num_kv_heads=8), "one of [1, 2, 4]"),
    (dict(num_kv_heads=0), "model.num_kv_heads=0 must be a positive"),
    (dict(rope_type="yarn"), "model.rope_type='yarn' is not supported; "
                             "supported RoPE types: 'default', 'llama3'"),
    (dict(rope_type="llama3", rope_low_freq_factor=4.0,
          rope_high_freq_factor=1.0), "must exceed"),
    (dict(rope_type="llama3", rope_factor=0.5), "model.rope_factor=0.5"),
])
def test_bad_model_config(overrides, message):
  with pytest.raises(ConfigError, match=None) as err:
    small_config(**overrides)
  assert message in str(err.value)


def test_unknown_key_suggests_closest():
  with pytest.raises(ConfigError) as err:
    build_model({"arch": "iiet", "iteration": 2})
  assert "'model.iteration'" in str(err.value)
  assert "Did you mean iterations" in str(err.value)


def test_iterations_normalised_per_layer():
  assert small_config(iterations=2).iterations == (2, 2, 2)
  cfg = ModelConfig.from_dict(dict(arch="iiet", num_layers=3,
                                   iterations=[1, 0, 3]))
  assert cfg.iterations == (1, 0, 3)
  assert cfg.block_evaluations_per_layer() == (2, 1, 4)
  assert small_config(arch="pcformer", pc_order=4
                      ).block_evaluations_per_layer() == (5, 5, 5)


@pytest.mark.parametrize("arg,message", [
    ("model=mamba", "model='mamba' is unknown"),
    ("size=7b", "size='7b' is unknown"),
    ("arch=iiet", "expected model=NAME,size=SIZE"),
])
def test_bad_config_variant(arg, message):
  with pytest.raises(ValueError) as err:
    load_lm_config(arg)
  assert message in str(err.value)


@pytest.mark.parametrize("model", ["transformer", "pcformer", "iiet"])
@pytest.mark.parametrize("size", ["tiny", "55m", "340m", "740m", "1.3b"])
def test_every_variant_builds(model, size):
  cfg = load_lm_config(f"model={model},size={size}")
  built = build_model(cfg.model).config
  assert built.arch == model
  assert built.tie_embeddings == (size != "1.3b")


def test_kv_heads_default_to_heads_and_override_from_the_config_file():
  cfg = load_lm_config("model=iiet,size=tiny")
  assert build_model(cfg.model).config.num_kv_heads == cfg.model.num_heads
  cfg.model.num_kv_heads = 2        # as --config.model.num_kv_heads=2 does
  cfg.model.rope_type = "llama3"
  built = build_model(cfg.model).config
  assert (built.num_kv_heads, built.query_groups) == (2, 2)
  assert built.rope_type == "llama3"
