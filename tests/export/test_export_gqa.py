"""Grouped-query attention and llama3 RoPE through export and import.

Expected values come from stock `transformers` LlamaForCausalLM (random
weights, `save_pretrained`) and from our PyTorch IIET, both on 512 tokens.
Each test prints its max |log-prob difference|.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch

from support import apply, init_params, random_tokens, small_config
from iiet_jax.export import names
from iiet_jax.models import ModelConfig
from export_folders import T, torch_logits, write_folder

LLAMA3 = dict(rope_type="llama3", rope_factor=8.0, rope_low_freq_factor=1.0,
              rope_high_freq_factor=4.0, rope_original_max_positions=128)


def max_logprob_diff(ours, theirs) -> float:
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  norm = lambda x: x - np.logaddexp.reduce(x, -1, keepdims=True)
  return float(np.abs(norm(ours) - norm(theirs)).max())


EXPORTS = {
    "transformer gqa 4/2": dict(arch="transformer", num_kv_heads=2),
    "transformer gqa 4/1 llama3": dict(arch="transformer", num_kv_heads=1,
                                       tie_embeddings=False, **LLAMA3),
    "iiet gqa 4/2 r=2": dict(arch="iiet", num_kv_heads=2, iterations=2),
    "e-iiet gqa 4/1 llama3": dict(arch="iiet", num_kv_heads=1,
                                  iterations=(2, 0, 1), **LLAMA3),
    "pcformer gqa 4/2": dict(arch="pcformer", num_kv_heads=2),
}
SLOW = ("pcformer gqa 4/2", "e-iiet gqa 4/1 llama3")


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c
    for c in EXPORTS])
def test_gqa_export_logits_equal_jax(case, tmp_path):
  """Transformer++ through stock LlamaForCausalLM (no remote code), IIET and
  PCformer through our PyTorch model."""
  cfg = small_config(max_seq_len=T, **EXPORTS[case])
  tokens = random_tokens(cfg, 2, T, seed=3)
  params = init_params(cfg, tokens[:, :8])
  write_folder(tmp_path, cfg, params)
  hf = json.loads((tmp_path / "config.json").read_text())
  assert hf["num_key_value_heads"] == cfg.num_kv_heads
  k_proj = names.to_hf(jax.device_get(params), cfg)[
      "model.layers.0.self_attn.k_proj.weight"]
  assert k_proj.shape == (cfg.num_kv_heads * cfg.head_dim, cfg.d_model)
  theirs = torch_logits(tmp_path, tokens,
                        remote=cfg.arch != "transformer")
  diff = max_logprob_diff(apply(cfg, params, tokens), theirs)
  print(f"{case}: max |log-prob diff| {diff:.2e}")
  assert diff < 1e-4, diff


def stock_llama(folder, **rope):
  from transformers import LlamaConfig, LlamaForCausalLM
  torch.manual_seed(0)
  model = LlamaForCausalLM(LlamaConfig(
      vocab_size=97, hidden_size=32, intermediate_size=48,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      max_position_embeddings=T, tie_word_embeddings=False,
      initializer_range=0.1, rope_parameters={"rope_theta": 500.0, **rope}))
  model.save_pretrained(folder)
  return model


@pytest.mark.parametrize("rope", [
    {"rope_type": "default"},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 128}],
    ids=["default", "llama3"])
def test_stock_gqa_llama_imports_with_equal_logits(rope, tmp_path):
  from safetensors.numpy import load_file
  model = stock_llama(tmp_path, **rope)
  fields = names.model_config(json.loads(
      (tmp_path / "config.json").read_text()))
  assert (fields["num_heads"], fields["num_kv_heads"]) == (4, 2)
  assert fields["rope_type"] == rope["rope_type"]
  cfg = ModelConfig(**fields, dtype="float32")
  params = names.from_hf(load_file(tmp_path / "model.safetensors"), cfg)
  tokens = random_tokens(cfg, 2, T, seed=5)
  with torch.no_grad():
    theirs = model(torch.as_tensor(np.array(tokens))).logits.double().numpy()
  diff = max_logprob_diff(apply(cfg, params, tokens), theirs)
  print(f"stock Llama GQA 4/2 {rope['rope_type']}: max |log-prob diff| "
        f"{diff:.2e}")
  assert diff < 1e-4, diff


def test_hf_config_round_trips_gqa_and_llama3():
  cfg = small_config(arch="iiet", num_kv_heads=2, **LLAMA3)
  hf = names.hf_config(cfg)
  assert hf["rope_parameters"] == {
      "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 128}
  back = names.model_config(hf)
  for key, value in back.items():
    want = getattr(cfg, key)
    assert (tuple(want) if key == "iterations" else want) == value, key
  # A transformers 4.x config (most published Llama 3 folders).
  legacy = {k: v for k, v in hf.items() if k != "rope_parameters"}
  legacy["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0,
                            "low_freq_factor": 1.0, "high_freq_factor": 4.0}
  legacy["rope_theta"] = 500000.0
  back = names.model_config(legacy)
  assert back["rope_base"] == 500000.0
  assert back["rope_original_max_positions"] == cfg.max_seq_len


@pytest.mark.parametrize("change,message", [
    ({"num_key_value_heads": 3}, "config.json has num_attention_heads=4 and "
                                 "num_key_value_heads=3"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}},
     "RoPE scaling of type 'yarn'"),
    ({"rope_parameters": None, "rope_scaling": {"type": "linear"}},
     "supported RoPE types: 'default', 'llama3'"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}},
     "lack ['low_freq_factor', 'high_freq_factor']"),
])
def test_model_config_refuses_what_we_cannot_run(change, message):
  hf = {**names.hf_config(small_config(arch="transformer")), **change}
  with pytest.raises(names.ExportError) as err:
    names.model_config(hf)
  assert message in str(err.value)


def test_pytorch_config_refuses_heads_that_do_not_divide():
  from iiet_jax.pytorch.configuration_iiet import IIETConfig
  with pytest.raises(ValueError, match="num_key_value_heads=3"):
    IIETConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
               num_key_value_heads=3)
