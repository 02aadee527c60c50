"""`iiet import` and sharded export through the safetensors library.

Folders are written by stock `transformers` (LlamaForCausalLM with random
weights, save_pretrained in shards); the expected logits come from that same
model in PyTorch. Bad folders are made by damaging such a save.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from iiet_jax.export import hf_folder, names, tensor_file
from iiet_jax.models import build_model

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16,
                "float32": torch.float32}
TOKENS = np.random.default_rng(0).integers(0, 128, (2, 16))


def llama(tied: bool = True, dtype: str = "bfloat16"):
  """A tiny stock Llama with random weights, norms included."""
  from transformers import LlamaConfig, LlamaForCausalLM
  torch.manual_seed(0)
  config = LlamaConfig(
      vocab_size=128, hidden_size=32, intermediate_size=48,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
      max_position_embeddings=64, rms_norm_eps=1e-6, initializer_range=0.2,
      tie_word_embeddings=tied)
  model = LlamaForCausalLM(config)
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(0.2 * torch.randn_like(p))
  return model.to(TORCH_DTYPES[dtype]).eval()


def save(model, folder: Path, shard: str | None = "20KB") -> Path:
  model.save_pretrained(folder, max_shard_size=shard or "1GB")
  return folder


def torch_logits(model) -> np.ndarray:
  with torch.no_grad():
    return model(torch.as_tensor(TOKENS)).logits.numpy()


def float32_logits(folder: Path) -> np.ndarray:
  """The folder in float32 PyTorch (RoPE frequencies computed in float32,
  not the rounded buffer of a model cast to bfloat16)."""
  from transformers import LlamaForCausalLM
  return torch_logits(LlamaForCausalLM.from_pretrained(folder,
                                                       dtype=torch.float32))


def our_logits(workdir: Path) -> np.ndarray:
  from iiet_jax.runs import open_model
  saved = open_model(str(workdir))
  cfg = dataclasses.replace(saved.model.config, dtype="float32")
  return np.asarray(build_model(cfg).apply({"params": saved.params},
                                           np.asarray(TOKENS, np.int32)))


@pytest.mark.parametrize("dtype,tied,shard", [
    ("bfloat16", True, "20KB"), ("float16", False, "20KB"),
    ("float32", False, None)])
def test_import_matches_transformers(dtype, tied, shard, tmp_path):
  model = llama(tied, dtype)
  src = save(model, tmp_path / "hf", shard)
  assert (src / tensor_file.INDEX).is_file() == (shard is not None)
  out = hf_folder.import_folder(str(src), str(tmp_path / "run"))
  np.testing.assert_allclose(our_logits(out), float32_logits(src),
                             atol=2e-5, rtol=1e-5)


def test_placed_into_a_sharded_mesh(tmp_path):
  """FSDP x tensor parallel on 8 devices: every leaf lands in its target
  sharding, each device holding only its slice, values equal."""
  import optax
  from safetensors.numpy import load_file
  from iiet_jax.parallel import sharding as shd
  from iiet_jax.parallel.mesh import make_mesh
  from iiet_jax.train import state as state_lib
  src = save(llama(tied=False), tmp_path / "hf")
  cfg = _cfg(src)
  mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  abstract, shardings = state_lib.state_shardings(
      build_model(cfg), optax.identity(), 1, mesh,
      shd.make_rules("fsdp_tp"))
  target = shd.placed(abstract.params, shardings.params)
  placed = names.from_hf(tensor_file.Folder(src), cfg, target)
  whole = {}
  for f in src.glob("*.safetensors"):
    whole.update(load_file(f))
  expected = names.from_hf(whole, cfg)
  split = 0
  for got, want, sharding in zip(jax.tree.leaves(placed),
                                 jax.tree.leaves(expected),
                                 jax.tree.leaves(shardings.params)):
    assert got.sharding == sharding and got.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(got), want.astype(np.float32))
    split += got.addressable_shards[0].data.shape != got.shape
  assert split >= 8  # embedding, head and the layer matrices are split


def _cfg(src: Path):
  from iiet_jax.models import ModelConfig
  fields = names.model_config(json.loads((src / "config.json").read_text()))
  return ModelConfig(**{**fields, "dtype": "float32"})


def test_sharded_export_loads_in_transformers(tmp_path):
  """Our writer's shards and index, read by from_pretrained; the index
  carries what transformers' own sharded save of that model carries."""
  from transformers import LlamaForCausalLM
  model = llama(tied=False, dtype="float32")
  src = save(model, tmp_path / "hf", None)
  cfg = _cfg(src)
  params = names.from_hf(tensor_file.Folder(src), cfg)
  out = tmp_path / "ours"
  out.mkdir()
  files = tensor_file.save(out, names.to_hf(params, cfg), np.float32,
                           "30KB")
  assert files[-1] == tensor_file.INDEX and len(files) >= 4
  assert files[0] == f"model-00001-of-{len(files) - 1:05d}.safetensors"
  (out / "config.json").write_text(json.dumps(names.hf_config(cfg)))
  loaded = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32)
  np.testing.assert_array_equal(torch_logits(loaded), torch_logits(model))
  save(loaded, tmp_path / "theirs", "30KB")
  ours, theirs = (json.loads((d / tensor_file.INDEX).read_text())
                  for d in (out, tmp_path / "theirs"))
  assert set(ours["weight_map"]) == set(theirs["weight_map"])
  assert set(ours["weight_map"].values()) == set(files[:-1])
  assert ours["metadata"]["total_size"] == theirs["metadata"]["total_size"]


def test_max_shard_size_values():
  assert tensor_file.parse_size("2GiB") == 2 * 2 ** 30
  assert tensor_file.parse_size("500MB") == 500 * 10 ** 6
  assert tensor_file.parse_size(4096) == 4096
  for bad in ("2 TB", "-1", "0", "big"):
    with pytest.raises(names.ExportError, match="max_shard_size"):
      tensor_file.parse_size(bad)


# Bad folders: each damage -> (what the error must name).


def _shards(src: Path) -> list[Path]:
  return sorted(src.glob("model-*.safetensors"))


def _rewrite(path: Path, change) -> None:
  """Re-saves one shard with `change(tensors)` applied."""
  from safetensors.torch import load_file, save_file
  tensors = load_file(path)
  change(tensors)
  save_file(tensors, path, metadata={"format": "pt"})


def _missing(src):
  _shards(src)[1].unlink()
  return [_shards(src)[0].name.replace("00001", "00002"), "model.layers."]


def _truncated(src):
  path = _shards(src)[1]
  path.write_bytes(path.read_bytes()[:-64])
  return [path.name, "truncated", "model.layers."]


def _corrupt_header(src):
  path = _shards(src)[0]
  data = bytearray(path.read_bytes())
  data[8:24] = b"\xff" * 16
  path.write_bytes(bytes(data))
  return [path.name, "corrupt", "model."]


def _mixed_dtypes(src):
  path = _shards(src)[-1]
  name = "model.norm.weight"
  _rewrite(path, lambda t: t.update({name: t[name].half()}))
  return [path.name, name, "F16", "BF16", "mixes dtypes"]


def _wrong_shape(src):
  name = "model.layers.1.mlp.up_proj.weight"
  path = src / json.loads((src / tensor_file.INDEX).read_text()
                          )["weight_map"][name]
  _rewrite(path, lambda t: t.update({name: t[name][:40].clone()}))
  return [path.name, name, "(40, 32) != (48, 32)"]


def _absent_from_shard(src):
  name = "model.layers.0.self_attn.k_proj.weight"
  path = src / json.loads((src / tensor_file.INDEX).read_text()
                          )["weight_map"][name]
  _rewrite(path, lambda t: t.pop(name))
  return [path.name, name, "does not hold it"]


@pytest.mark.parametrize("damage", [
    _missing, _truncated, _corrupt_header, _mixed_dtypes, _wrong_shape,
    _absent_from_shard], ids=lambda f: f.__name__.strip("_"))
def test_bad_folder_is_named_and_leaves_nothing(damage, tmp_path):
  src = save(llama(), tmp_path / "hf")
  assert len(_shards(src)) >= 3
  must_name = damage(src)
  with pytest.raises(names.ExportError) as err:
    hf_folder.import_folder(str(src), str(tmp_path / "run"))
  for part in must_name:
    assert part in str(err.value), (part, str(err.value))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
