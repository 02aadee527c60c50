"""Tokenizers of exports in stock transformers, and imports of folders whose
only tokenizer is a tokenizer.json (as Llama-3's).

Expected ids come from SentencePiece or from the tokenizers library itself;
expected log-probs from the PyTorch model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from iiet_jax.data import tokenizer as tok_lib
from iiet_jax.export import hf_tokenizer, names
from support import apply, init_params, small_config
from tokenizer_texts import VOCAB, corpus_texts, sample_texts

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]
TEXT = "def f(x):\n\treturn x  # ünï 🙂\n"


@pytest.fixture(scope="module")
def sp_tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "spm.model"
  return tok_lib.train_tokenizer(corpus_texts(), VOCAB, path)


def _export_folder(folder: Path, cfg, params, tokenizer) -> Path:
  """What `iiet export` writes for `params` (minus iiet_export.json)."""
  folder.mkdir()
  save_file(names.to_hf(jax.device_get(params), cfg),
            str(folder / "model.safetensors"), metadata={"format": "pt"})
  (folder / "config.json").write_text(json.dumps(names.hf_config(cfg)))
  hf_tokenizer.write(folder, tokenizer, cfg.max_seq_len)
  return folder


def test_transformer_export_is_a_stock_llama_folder(sp_tokenizer, tmp_path):
  cfg = small_config(arch="transformer", vocab_size=VOCAB)
  params = init_params(cfg, jnp.ones((1, 8), jnp.int32))
  folder = _export_folder(tmp_path / "hf", cfg, params, sp_tokenizer)
  tok = transformers.AutoTokenizer.from_pretrained(folder)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      folder, dtype=torch.float32)
  assert type(model).__name__ == "LlamaForCausalLM"
  batch = tok(TEXT, return_tensors="pt")
  ids = [sp_tokenizer.bos_id, *sp_tokenizer.encode(TEXT)]
  assert batch["input_ids"][0].tolist() == ids
  with torch.no_grad():
    theirs = model(**batch).logits.numpy()
  ours = apply(cfg, params, jnp.asarray([ids], jnp.int32))
  assert np.abs(np.asarray(ours) - theirs).max() < 1e-4


def test_iiet_export_tokenizer_needs_no_remote_code(sp_tokenizer, tmp_path):
  """Only the model class is remote code. (A plain AutoTokenizer call asks
  about the config's code first; `trust_remote_code=False` answers no.)"""
  folder = tmp_path / "hf"
  folder.mkdir()
  cfg = small_config(arch="iiet", vocab_size=VOCAB)
  (folder / "config.json").write_text(json.dumps(names.hf_config(cfg)))
  hf_tokenizer.write(folder, sp_tokenizer, cfg.max_seq_len)
  tok = transformers.AutoTokenizer.from_pretrained(folder,
                                                   trust_remote_code=False)
  for text in sample_texts():
    assert tok(text)["input_ids"] == [1] + sp_tokenizer.encode(text)
  with pytest.raises(ValueError, match="trust_remote_code"):
    transformers.AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=False)


def _byte_level_bpe():
  """A Llama-3-style tokenizer (byte-level BPE, no tokenizer.model)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  fast = Tokenizer(models.BPE())
  fast.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  fast.decoder = decoders.ByteLevel()
  fast.train_from_iterator(corpus_texts(), trainers.BpeTrainer(
      vocab_size=320, show_progress=False,
      special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  return fast


def _config_file(tmp_path: Path) -> Path:
  """configs/lm.py's Transformer++, reading a local folder of documents."""
  docs = tmp_path / "docs"
  docs.mkdir()
  for i, text in enumerate(sample_texts()[:4]):
    (docs / f"doc{i}.txt").write_text(text, encoding="utf-8")
  path = tmp_path / "cfg.py"
  path.write_text(
      "from iiet_jax import overrides\n"
      "def get_config():\n"
      f"  config = overrides.load({str(ROOT / 'configs' / 'lm.py')!r}"
      f" + ':model=transformer,size=tiny')\n"
      "  config.data.source = 'files'\n"
      f"  config.data.paths = ({str(docs)!r},)\n"
      f"  config.data.data_dir = {str(tmp_path / 'tfds')!r}\n"
      "  config.data.validation_fraction = 0.25\n"
      "  return config\n")
  return path


def test_import_of_a_folder_with_only_tokenizer_json(tmp_path):
  from transformers import LlamaConfig, LlamaForCausalLM
  from iiet_jax import checkpoint as ckpt_lib
  from iiet_jax.data import fast_tokenizer, sources
  from iiet_jax.export import hf_folder, score
  import ml_collections
  fast = _byte_level_bpe()
  vocab = fast.get_vocab_size()
  bos, eos = fast.token_to_id("<|begin_of_text|>"), \
      fast.token_to_id("<|end_of_text|>")
  torch.manual_seed(0)
  model = LlamaForCausalLM(LlamaConfig(
      vocab_size=vocab, hidden_size=32, intermediate_size=48,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
      max_position_embeddings=128, bos_token_id=bos, eos_token_id=eos,
      tie_word_embeddings=False)).eval()
  src = tmp_path / "llama3"
  model.save_pretrained(src)
  fast.save(str(src / "tokenizer.json"))
  assert sorted(os.listdir(src)) == ["config.json", "generation_config.json",
                                     "model.safetensors", "tokenizer.json"]

  from iiet_jax import overrides
  out = hf_folder.import_folder(
      str(src), str(tmp_path / "ours"),
      overrides.load(str(_config_file(tmp_path))))
  assert (out / "tokenizer.json").read_bytes() == \
      (src / "tokenizer.json").read_bytes()
  assert json.loads((out / "tokenizer_config.json").read_text()) == {
      "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}

  # `iiet score` reads text with it.
  text_file = tmp_path / "text.txt"
  text_file.write_text(TEXT, encoding="utf-8")
  result = score.score(str(out), str(text_file), out=str(tmp_path / "s.npz"))
  scores = np.load(tmp_path / "s.npz")
  ids = [bos, *fast.encode(TEXT).ids]
  assert result["rows"] == 1 and scores["token_ids"].tolist() == [ids]
  with torch.no_grad():
    logits = model(torch.as_tensor([ids])).logits.double()
  theirs = torch.log_softmax(logits, -1)[:, :-1].gather(
      -1, torch.as_tensor([ids[1:]])[..., None])[..., 0].numpy()
  assert np.abs(scores["logprobs"] - theirs).max() < 1e-4

  # Training data: the imported run's config tokenises its corpus with it.
  data = ml_collections.ConfigDict(ckpt_lib.saved_run(str(out)).config["data"])
  assert data.tokenizer == str(out / "tokenizer.json")
  inputs = sources.open_inputs(data, vocab)
  assert isinstance(inputs.tokenizer, fast_tokenizer.JsonTokenizer)
  document = inputs.train[0]
  text = document["text"]
  text = text.decode("utf-8") if isinstance(text, bytes) else text
  assert inputs.to_ids.map(document).tolist() == \
      [bos, *fast.encode(text).ids, eos]
