"""tokenizer.json: our SentencePiece model converted for the ecosystem, and
any tokenizer.json as a tokenizer of ours.

Expected ids come from SentencePiece itself (what the pipeline trains with);
for the tokenizer.json backend, from the tokenizers library directly.
"""

from __future__ import annotations

import io
import json
import pickle

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer

from iiet_jax.data import fast_tokenizer
from iiet_jax.data import tokenizer as tok_lib
from iiet_jax.export import hf_tokenizer
from tokenizer_texts import (EDGES, SPECIAL_TEXT, VOCAB, corpus_texts,
                             sample_texts)


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
  """Our trained SentencePiece tokenizer and an export's tokenizer files."""
  root = tmp_path_factory.mktemp("fast")
  tokenizer = tok_lib.train_tokenizer(corpus_texts(), VOCAB,
                                      root / "spm.model")
  hf_tokenizer.write(root, tokenizer, max_len=128)
  return tokenizer, root


def test_export_files(ours):
  tokenizer, folder = ours
  assert (folder / "tokenizer.model").read_bytes() == tokenizer.model_proto
  config = json.loads((folder / "tokenizer_config.json").read_text())
  assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
  assert "auto_map" not in config
  assert {k: config[k] for k in fast_tokenizer.SPECIAL_KEYS} == {
      "pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>",
      "unk_token": "<unk>"}


def test_converted_ids_equal_sentencepiece(ours):
  tokenizer, folder = ours
  sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
  fast = Tokenizer.from_file(str(folder / "tokenizer.json"))
  bytes_seen = 0
  for text in sample_texts():
    want = sp.encode(text)
    assert tokenizer.encode(text) == want
    assert fast.encode(text, add_special_tokens=False).ids == want, text[:80]
    assert fast.encode(text).ids == [tok_lib.BOS_ID] + want
    assert fast.decode(want) == text
    bytes_seen += sum(4 <= i < 4 + tok_lib.NUM_BYTES for i in want)
  assert bytes_seen > 100  # byte fallback was exercised


def test_special_tokens(ours):
  tokenizer, folder = ours
  fast = Tokenizer.from_file(str(folder / "tokenizer.json"))
  ids = {p: fast.token_to_id(p) for p in ("<pad>", "<s>", "</s>", "<unk>")}
  assert ids == {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
  assert fast.decode([1, *tokenizer.encode("x = 1"), 2, 0]) == "x = 1"
  # Like SentencePiece, the strings of special tokens in a text are text
  # once the flag that tokenizer.json cannot store is set.
  fast.encode_special_tokens = True
  assert fast.encode(SPECIAL_TEXT, add_special_tokens=False).ids == \
      tokenizer.encode(SPECIAL_TEXT)


def test_auto_tokenizer_needs_no_remote_code(ours):
  transformers = pytest.importorskip("transformers")
  tokenizer, folder = ours
  (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
  auto = transformers.AutoTokenizer.from_pretrained(folder)
  assert type(auto).__module__.startswith("transformers.")
  assert (auto.pad_token_id, auto.bos_token_id, auto.eos_token_id,
          auto.unk_token_id) == (0, 1, 2, 3)
  for text in sample_texts() + [SPECIAL_TEXT]:
    ids = auto(text)["input_ids"]
    assert ids == [1] + tokenizer.encode(text), text[:80]
    assert auto.decode(ids, skip_special_tokens=True) == text


def test_llama2_style_model_converts(tmp_path):
  """A dummy-prefix model, as Llama-2's tokenizer.model is."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(
          "".join(corpus_texts()).splitlines(keepends=True)),
      model_writer=model, model_type="bpe", vocab_size=VOCAB,
      byte_fallback=True, add_dummy_prefix=True, split_digits=True,
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
  sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
  tokenizer = tok_lib.Tokenizer(model.getvalue())
  assert "pad_token" not in tokenizer.special_pieces()
  fast = fast_tokenizer.from_sentencepiece(model.getvalue())
  for text in sample_texts():
    want = sp.encode(text)
    assert fast.encode(text, add_special_tokens=False).ids == want, text[:80]
    assert fast.decode(want) == sp.decode(want)


def test_unconvertible_models_are_refused(tmp_path):
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus_texts()[0].splitlines()),
      model_writer=model, model_type="unigram", vocab_size=200, minloglevel=2)
  with pytest.raises(tok_lib.TokenizerError,
                     match=r"m\.model is not a BPE model"):
    fast_tokenizer.from_sentencepiece(model.getvalue(), "m.model")


def test_json_backend_has_our_interface(ours):
  tokenizer, folder = ours
  loaded = tok_lib.load_tokenizer(folder / "tokenizer.json")
  assert isinstance(loaded, fast_tokenizer.JsonTokenizer)
  assert loaded.vocab_size == tokenizer.vocab_size == VOCAB
  assert (loaded.pad_id, loaded.bos_id, loaded.eos_id) == (0, 1, 2)
  assert loaded.special_pieces() == tokenizer.special_pieces()
  clone = pickle.loads(pickle.dumps(loaded))
  for text in sample_texts()[-len(EDGES):] + [SPECIAL_TEXT]:
    assert loaded.encode(text) == tokenizer.encode(text)
    assert clone.encode(text) == tokenizer.encode(text)
    assert loaded.decode([1, *tokenizer.encode(text), 2]) == text
  assert loaded.hf_files()["tokenizer.json"] == \
      (folder / "tokenizer.json").read_bytes()


def test_json_backend_errors_name_the_file(ours, tmp_path):
  _, folder = ours
  bare = tmp_path / "tokenizer.json"
  bare.write_bytes((folder / "tokenizer.json").read_bytes())
  with pytest.raises(tok_lib.TokenizerError,
                     match=rf"bos_token or eos_token .*{bare}.*write "
                           rf"{tmp_path}/tokenizer_config.json"):
    tok_lib.load_tokenizer(bare)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": "<s>", "eos_token": {"content": "<eos>"}}))
  with pytest.raises(tok_lib.TokenizerError,
                     match=r"eos_token='<eos>' .* is not a token of"):
    tok_lib.load_tokenizer(bare)
  other = tmp_path / "spm.bin"
  other.write_bytes(b"")
  with pytest.raises(tok_lib.TokenizerError, match=r"spm\.bin: the suffix"):
    tok_lib.load_tokenizer(other)


def test_import_carries_a_tokenizer_json_with_its_special_tokens(ours,
                                                                 tmp_path):
  from iiet_jax.export.names import ExportError
  _, folder = ours
  src, stage = tmp_path / "src", tmp_path / "stage"
  src.mkdir()
  stage.mkdir()
  assert hf_tokenizer.carry(src, stage, tmp_path / "final") is None
  (src / "tokenizer.json").write_bytes(
      (folder / "tokenizer.json").read_bytes())
  with pytest.raises(ExportError, match=rf"--hf={src}: No bos_token or "
                                        rf"eos_token"):
    hf_tokenizer.carry(src, stage, tmp_path / "final")
  # Ids from config.json (several eos ids: the first), names from the
  # tokenizer's own files where it has them.
  (src / "config.json").write_text(json.dumps(
      {"bos_token_id": 1, "eos_token_id": [2, 0], "pad_token_id": None}))
  (src / "special_tokens_map.json").write_text(json.dumps(
      {"unk_token": {"content": "<unk>", "special": True}}))
  path = hf_tokenizer.carry(src, stage, tmp_path / "final")
  assert path == str(tmp_path / "final" / "tokenizer.json")
  assert json.loads((stage / "tokenizer_config.json").read_text()) == {
      "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
  loaded = tok_lib.load_tokenizer(stage / "tokenizer.json")
  assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (1, 2, -1)
