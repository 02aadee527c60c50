"""Export to PyTorch: names, file format, logits against our JAX models.

The PyTorch side (iiet_jax/pytorch) is a second implementation of SPEC.md
sections 1-4; Transformer++ is also checked against stock `transformers`
Llama. Inputs are 512 tokens long, where a RoPE layout mistake could not
hide.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from export_folders import T, torch_logits, write_folder
from support import apply, init_params, random_tokens, small_config
from iiet_jax import pytorch
from iiet_jax.export import names, tensor_file
from iiet_jax.models import registry

CASES = {
    "transformer": dict(arch="transformer"),
    "iiet r=2": dict(arch="iiet", iterations=2),
    "e-iiet 3,0,1": dict(arch="iiet", iterations=(3, 0, 1)),
    "e-iiet 2,1,0 unrolled": dict(arch="iiet", iterations=(2, 1, 0),
                                  scan_layers=False),
    "pcformer order 2": dict(arch="pcformer", pc_order=2),
    "pcformer order 4": dict(arch="pcformer", pc_order=4),
    "transformer untied, rope 500": dict(arch="transformer",
                                         tie_embeddings=False,
                                         rope_base=500.0),
}


def compare(ours, theirs) -> tuple[float, float]:
  """(max |logit difference|, max over positions of KL(ours || theirs))."""
  ours = np.asarray(ours, np.float64)
  lp = ours - np.logaddexp.reduce(ours, -1, keepdims=True)
  lq = theirs - np.logaddexp.reduce(theirs, -1, keepdims=True)
  kl = (np.exp(lp) * (lp - lq)).sum(-1)
  return float(np.abs(ours - theirs).max()), float(kl.max())


@pytest.mark.parametrize("case", list(CASES))
def test_pytorch_logits_equal_jax_logits(case, tmp_path):
  cfg = small_config(max_seq_len=T, **CASES[case])
  tokens = random_tokens(cfg, 2, T, seed=3)
  params = init_params(cfg, tokens[:, :8])
  write_folder(tmp_path, cfg, params)
  diff, kl = compare(apply(cfg, params, tokens), torch_logits(tmp_path,
                                                             tokens))
  print(f"{case}: max |logit diff| {diff:.2e}, max KL {kl:.2e}")
  assert kl < 1e-6 and diff < 1e-4, (diff, kl)


@pytest.mark.parametrize("arch", [a.name for a in registry.ARCHITECTURES
                                  if a.remote_code])
def test_twin_loads_exactly_the_exported_tensors(arch, tmp_path):
  """The twin builds no module the export has no tensors for, and the
  export has none the twin does not read."""
  from transformers import AutoModelForCausalLM
  cfg = small_config(arch=arch, max_seq_len=T)
  write_folder(tmp_path, cfg, init_params(cfg, random_tokens(cfg, 1, 8)))
  _, info = AutoModelForCausalLM.from_pretrained(
      tmp_path, trust_remote_code=True, dtype=torch.float32,
      output_loading_info=True)
  assert not any(info.values()), info


def test_transformer_export_is_a_stock_llama(tmp_path):
  from transformers import LlamaForCausalLM
  cfg = small_config(arch="transformer", max_seq_len=T, rope_base=500.0)
  tokens = random_tokens(cfg, 1, T, seed=4)
  params = init_params(cfg, tokens[:, :8])
  write_folder(tmp_path, cfg, params)
  for name in pytorch.SHIPPED_FILES:
    (tmp_path / name).unlink()  # no remote code at all
  model = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
  assert model.config.rope_parameters["rope_theta"] == 500.0
  diff, kl = compare(apply(cfg, params, tokens),
                     torch_logits(tmp_path, tokens, remote=False))
  assert kl < 1e-6 and diff < 1e-4, (diff, kl)


def test_padded_rows_score_like_unpadded_ones(tmp_path):
  """attention_mask with left padding: real tokens keep positions 0.."""
  cfg = small_config(iterations=(1, 2, 0), max_seq_len=64)
  tokens = random_tokens(cfg, 1, 20, seed=5)
  params = init_params(cfg, tokens)
  write_folder(tmp_path, cfg, params)
  from transformers import AutoModelForCausalLM
  model = AutoModelForCausalLM.from_pretrained(tmp_path,
                                               trust_remote_code=True)
  ids = torch.as_tensor(np.array(tokens), dtype=torch.long)
  padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids], 1)
  mask = torch.cat([torch.zeros(1, 5), torch.ones(1, 20)], 1).long()
  with torch.no_grad():
    plain = model(ids).logits
    left = model(padded, attention_mask=mask).logits[:, 5:]
  np.testing.assert_allclose(left.numpy(), plain.numpy(), atol=1e-5)
  np.testing.assert_allclose(plain.numpy(), apply(cfg, params, tokens),
                             atol=1e-4)


@pytest.mark.parametrize("layout", ["scan", "unrolled"])
@pytest.mark.parametrize("arch", ["transformer", "iiet", "pcformer"])
def test_names_round_trip_exactly(arch, layout):
  cfg = small_config(arch=arch, scan_layers=layout == "scan",
                     iterations=(2, 0, 1), tie_embeddings=arch != "iiet")
  params = init_params(cfg, random_tokens(cfg, 1, 4))
  hf = names.to_hf(jax.device_get(params), cfg)
  assert set(hf) == set(names.expected_shapes(cfg))
  back = names.from_hf(hf, cfg)
  jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(params))
  assert jax.tree.structure(back) == jax.tree.structure(params)
  # SPEC.md section 6 shapes, PyTorch [out, in].
  D, F, L = cfg.d_model, cfg.d_ff, cfg.num_layers
  assert hf["model.layers.1.mlp.down_proj.weight"].shape == (D, F)
  assert hf["model.layers.1.mlp.gate_proj.weight"].shape == (F, D)
  if registry.get(arch).history:
    assert hf["model.history.weight"].shape == (L + 1, L + 1)
    assert hf[f"model.history.rouge_predictions_norm.{L - 1}.bias"].shape \
        == (D,)
  if arch == "pcformer":
    assert hf["model.alpha"].shape == (1,)
    assert "model.RK_norm.1.weight" in hf


def test_from_hf_names_what_does_not_match():
  cfg = small_config()
  hf = names.to_hf(jax.device_get(init_params(cfg, random_tokens(cfg, 1, 4))),
                   cfg)
  broken = dict(hf)
  del broken["model.history.weight_c"]
  broken["model.extra"] = np.zeros(3, np.float32)
  broken["model.norm.weight"] = np.zeros(5, np.float32)
  with pytest.raises(names.ExportError) as err:
    names.from_hf(broken, cfg)
  for part in ("model.history.weight_c", "model.extra", "model.norm.weight"):
    assert part in str(err.value)


@pytest.mark.parametrize("dtype", [np.float32, "bfloat16"])
def test_tensor_file_agrees_with_pytorch_safetensors(dtype, tmp_path):
  from safetensors.torch import load_file, save_file
  import ml_dtypes
  dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
  arrays = {"b.weight": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
            "a": np.array([1.5, -2.25], np.float32)}
  arrays = {k: v.astype(dt) for k, v in arrays.items()}
  (tmp_path / "ours").mkdir()
  tensor_file.save(tmp_path / "ours", arrays, dt)
  loaded = load_file(tmp_path / "ours" / tensor_file.SINGLE)
  for k, v in arrays.items():
    np.testing.assert_array_equal(loaded[k].float().numpy(),
                                  v.astype(np.float32))
  (tmp_path / "theirs").mkdir()
  save_file({k: v.clone() for k, v in loaded.items()},
            tmp_path / "theirs" / tensor_file.SINGLE)
  folder = tensor_file.Folder(tmp_path / "theirs")
  back = {k: folder.get(k) for k in folder.shapes}
  for k, v in arrays.items():
    assert back[k].dtype == v.dtype
    np.testing.assert_array_equal(back[k].astype(np.float32),
                                  v.astype(np.float32))


def test_hf_config_round_trips_to_our_model_config():
  cfg = small_config(arch="pcformer", pc_order=4, rope_base=500.0,
                     tie_embeddings=False)
  back = names.model_config(names.hf_config(cfg))
  for key, value in back.items():
    want = getattr(cfg, key)
    assert (tuple(want) if key == "iterations" else want) == value, key
  with pytest.raises(names.ExportError, match="num_key_value_heads=3"):
    names.model_config({**names.hf_config(cfg), "num_key_value_heads": 3})
  with pytest.raises(names.ExportError, match="model_type"):
    names.model_config({**names.hf_config(cfg), "model_type": "gpt2"})


def test_pytorch_config_rejects_what_it_cannot_run():
  from iiet_jax.pytorch.configuration_iiet import IIETConfig
  with pytest.raises(ValueError, match="iterations has 2 entries"):
    IIETConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
               iterations=[1, 2])
  with pytest.raises(ValueError, match="pc_order"):
    IIETConfig(iiet_arch="pcformer", pc_order=3)
