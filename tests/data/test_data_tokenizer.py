"""Contracts of the SentencePiece tokenizer: training, caching, loading."""

from __future__ import annotations

import pickle
import sysconfig
from pathlib import Path

import pytest

from iiet_jax.data import tokenizer as tok_lib

VOCAB = 400
# Three stdlib modules: real text that any interpreter ships, ~150 KB.
_SOURCES = ("textwrap.py", "string.py", "argparse.py")


def _corpus() -> list[str]:
  root = Path(sysconfig.get_paths()["stdlib"])
  return [(root / name).read_text(encoding="utf-8") for name in _SOURCES]


class _Texts:
  """An iterable over the corpus that records whether anyone read it."""

  def __init__(self, forbid: bool = False):
    self.forbid, self.reads = forbid, 0

  def __iter__(self):
    if self.forbid:
      raise AssertionError("the cached tokenizer should not read the corpus")
    self.reads += 1
    return iter(_corpus())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "spm_bpe.model"
  return tok_lib.train_tokenizer(_corpus(), VOCAB, path), path


def test_trained_model_has_requested_size_and_llama_ids(trained):
  tokenizer, path = trained
  assert path.is_file()
  assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
  assert tokenizer.vocab_size == VOCAB
  assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)


@pytest.mark.parametrize("text", [
    "def f(x):\n    return x + 1\n",
    "  two leading spaces,\ttabs and\n\nblank lines  \n",
    "naïve café — 日本語 🙂 Ωμέγα",
    "",
])
def test_round_trip_is_exact(trained, text):
  tokenizer, _ = trained
  ids = tokenizer.encode(text)
  assert tokenizer.decode(ids) == text
  assert tok_lib.UNK_ID not in ids
  assert all(0 < i < VOCAB for i in ids)


def test_unseen_characters_fall_back_to_bytes(trained):
  tokenizer, _ = trained
  # Byte b is piece 4 + b: the 4 special ids come first, then the bytes.
  assert tokenizer.encode("🙂") == [4 + b for b in "🙂".encode("utf-8")]
  assert tokenizer.decode([4 + b for b in "é".encode("utf-8")]) == "é"


def test_merges_compress_common_code(trained):
  tokenizer, _ = trained
  text = "    def __init__(self, name):\n        self.name = name\n"
  # Without merges every character would be one id; with them, far fewer.
  assert len(tokenizer.encode(text)) < 0.7 * len(text)


def test_loaded_and_pickled_models_match_trained(trained):
  tokenizer, path = trained
  text = "return self._format_usage(usage, actions) 🙂"
  loaded = tok_lib.load_tokenizer(str(path))
  assert loaded.vocab_size == VOCAB
  assert loaded.encode(text) == tokenizer.encode(text)
  clone = pickle.loads(pickle.dumps(loaded))
  assert clone.encode(text) == tokenizer.encode(text)
  assert clone.path == str(path)


def test_missing_model_is_an_error_naming_the_path(tmp_path):
  missing = tmp_path / "nowhere" / "spm.model"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    tok_lib.load_tokenizer(missing)


def test_load_or_train_trains_once_then_reuses_the_cache(tmp_path):
  path = tmp_path / "spm_bpe.model"
  texts = _Texts()
  first = tok_lib.load_or_train(path, VOCAB, texts)
  assert texts.reads == 1
  mtime = path.stat().st_mtime_ns
  second = tok_lib.load_or_train(path, VOCAB, _Texts(forbid=True))
  assert path.stat().st_mtime_ns == mtime
  assert second.encode("import os\n") == first.encode("import os\n")


def test_cached_model_of_another_size_is_refused(trained):
  _, path = trained
  mtime = path.stat().st_mtime_ns
  with pytest.raises(tok_lib.TokenizerError,
                     match=rf"{path}.*vocab_size={VOCAB}.*vocab_size=450"):
    tok_lib.load_or_train(path, 450, _Texts(forbid=True))
  assert path.stat().st_mtime_ns == mtime


def test_check_vocab():
  tok_lib.check_vocab(32000, 32000)
  with pytest.raises(tok_lib.TokenizerError, match="32000.*32128"):
    tok_lib.check_vocab(32000, 32128)


def test_vocab_without_room_for_merges_is_refused(tmp_path):
  with pytest.raises(tok_lib.TokenizerError, match="vocab_size=260"):
    tok_lib.train_tokenizer(_corpus(), 260, tmp_path / "m.model")
  assert not (tmp_path / "m.model").exists()


def test_too_little_text_for_the_vocab_is_a_clear_error(tmp_path):
  with pytest.raises(tok_lib.TokenizerError, match="4000.*too high"):
    tok_lib.train_tokenizer(["tiny corpus\n"], 4000, tmp_path / "m.model")
  assert not (tmp_path / "m.model").exists()


def test_training_sentences_keep_all_text_within_the_length_limit():
  texts = ["x" * 5000, "short\n" * 400, "a\n" + "é" * 3000 + "\nend\n"]
  counts = {"chars": 0, "documents": 0}
  pieces = list(tok_lib._training_sentences(texts, 10**9, counts))
  assert "".join(pieces) == "".join(texts)
  # SentencePiece drops sentences over 4192 bytes.
  assert max(len(p.encode("utf-8")) for p in pieces) <= 4096
  assert counts == {"chars": sum(map(len, texts)), "documents": 3}


def test_training_reads_only_a_sample():
  texts = ["line\n" * 100] * 50  # 500 characters per document.
  counts = {"chars": 0, "documents": 0}
  pieces = list(tok_lib._training_sentences(texts, 1200, counts))
  assert counts["documents"] == 3
  assert 1200 <= len("".join(pieces)) < 1500


def test_a_run_carries_its_tokenizer_and_refuses_another(trained, tmp_path):
  trained, _ = trained
  assert tok_lib.carried_by(tmp_path) is None
  main = tok_lib.carry(trained, tmp_path)
  assert main == tmp_path / "tokenizer.model"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.model"]
  again = tok_lib.carried_by(tmp_path)
  assert again.model_proto == trained.model_proto
  assert tok_lib.carry(trained, tmp_path) == main   # the same: accepted
  other = tok_lib.train_tokenizer(_corpus()[::-1] + ["zzz yyy"] * 50, VOCAB,
                                  tmp_path / "elsewhere" / "o.model")
  assert other.model_proto != trained.model_proto
  with pytest.raises(tok_lib.TokenizerError, match="carries the tokenizer"):
    tok_lib.carry(other, tmp_path)
  assert tok_lib.carried_by(tmp_path).model_proto == trained.model_proto


def test_a_json_tokenizer_is_carried_with_its_special_tokens(trained,
                                                              tmp_path):
  from iiet_jax.data import fast_tokenizer
  trained, _ = trained
  text = trained.hf_files()["tokenizer.json"].decode("utf-8")
  special = trained.special_pieces()
  json_tok = fast_tokenizer.JsonTokenizer(text, special)
  tok_lib.carry(json_tok, tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "tokenizer.json", "tokenizer_config.json"]
  back = tok_lib.carried_by(tmp_path)
  assert (back.bos_id, back.eos_id, back.pad_id) == (1, 2, 0)
  sample = "def f(x):\n  return x  # ünï"
  assert back.encode(sample) == trained.encode(sample)
