"""Contracts of `data.source`: each kind opens, and bad input is named."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest

from iiet_jax.data import corpus
from iiet_jax.data import loader
from iiet_jax.data import pipeline as pl
from iiet_jax.data import sources
from iiet_jax.data import tokenizer as tok_lib
from training import load_lm_config

VOCAB = 400


def _config(tmp_path, **data):
  config = load_lm_config("model=transformer,size=tiny")
  config.model.vocab_size = VOCAB
  config.batch_size, config.seq_len = 2, 32
  config.data.update(dict(data_dir=str(tmp_path / "tfds"),
                          tokenizer_sample_chars=200_000, eval_batches=2))
  config.data.update(data)
  return config


_STDLIB = Path(sysconfig.get_paths()["stdlib"])
_MODULES = sorted(p.name for p in _STDLIB.glob("[a-s]*.py"))[:40]


def _write_texts(root):
  """Forty real stdlib modules as .txt documents."""
  root.mkdir(parents=True, exist_ok=True)
  for i, name in enumerate(_MODULES):
    (root / f"doc{i}.txt").write_bytes((_STDLIB / name).read_bytes())


def test_files_source_trains_and_caches_a_tokenizer(tmp_path):
  _write_texts(tmp_path / "src")
  config = _config(tmp_path, source="files", paths=(str(tmp_path / "src"),),
                   validation_fraction=0.3)
  loaders = loader.make_loaders(config)
  assert loaders.tokenizer.vocab_size == VOCAB
  assert loaders.tokenizer.path.endswith(f"spm_bpe_{VOCAB}.model")
  batch = next(loaders.train)
  assert set(batch) == set(pl.PACKED_KEYS)
  assert batch["tokens"].shape == (2, 32) and batch["tokens"].max() < VOCAB
  # bos only ever opens a segment; a segment it opens is a module's start.
  starts = []
  for row, seg in zip(batch["tokens"], batch["segment_ids"]):
    for s in set(seg[seg > 0]):
      piece = row[seg == s]
      assert tok_lib.BOS_ID not in piece[1:]
      if piece[0] == tok_lib.BOS_ID:
        starts.append(loaders.tokenizer.decode(piece[1:]))
  texts = [(_STDLIB / m).read_text() for m in _MODULES]
  assert starts and all(any(t.startswith(p) for t in texts) for p in starts)
  assert loaders.validation and loaders.validation[0]["tokens"].shape == (2, 32)
  loaders.close()


def test_prepared_corpus_reads_back_as_a_tfds_source(tmp_path):
  _write_texts(tmp_path / "src")
  builder = corpus.prepare(corpus.text_corpus_builder(
      tmp_path / "src", tmp_path / "tfds", validation_fraction=0.3))
  tokenizer = corpus.corpus_tokenizer(builder, VOCAB, max_chars=200_000)
  config = _config(tmp_path, source="tfds",
                   tfds_name=f"text_corpus/{builder.builder_config.name}",
                   tokenizer=tokenizer.path)
  inputs = sources.open_inputs(config.data, VOCAB)
  assert len(inputs.train) == builder.info.splits["train"].num_examples
  ids = inputs.to_ids(inputs.train[0])
  assert ids[0] == tok_lib.BOS_ID and ids[-1] == tok_lib.EOS_ID
  assert tokenizer.decode(ids[1:-1]) == inputs.train[0]["text"].decode()


def test_unprepared_tfds_dataset_is_an_error_naming_it(tmp_path):
  config = _config(tmp_path, source="tfds", tfds_name="mnist")
  with pytest.raises(FileNotFoundError, match="'mnist' is not prepared"):
    sources.open_inputs(config.data, VOCAB)


def test_token_records_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  docs = [rng.integers(3, VOCAB, size=n) for n in rng.integers(5, 90, 60)]
  sources.write_token_records(tmp_path / "train.array_record", docs[:40])
  sources.write_token_records(tmp_path / "val.array_record", docs[40:])
  config = _config(tmp_path, source="tokens",
                   paths=(str(tmp_path / "train.array_record"),),
                   validation_paths=(str(tmp_path / "val.array_record"),))
  inputs = sources.open_inputs(config.data, VOCAB)
  assert inputs.tokenizer is None and len(inputs.train) == 40
  for i in (0, 17, 39):
    np.testing.assert_array_equal(inputs.to_ids(inputs.train[i]), docs[i])
  loaders = loader.make_loaders(config)
  assert next(loaders.train)["tokens"].shape == (2, 32)


def test_token_ids_beyond_the_vocabulary_are_refused(tmp_path):
  sources.write_token_records(tmp_path / "t.array_record", [[5, VOCAB + 4]])
  config = _config(tmp_path, source="tokens",
                   paths=(str(tmp_path / "t.array_record"),),
                   validation_paths=(str(tmp_path / "t.array_record"),))
  with pytest.raises(tok_lib.TokenizerError, match=f"token id {VOCAB + 4}"):
    sources.open_inputs(config.data, VOCAB)


def test_missing_token_files_are_named(tmp_path):
  config = _config(tmp_path, source="tokens", paths=("/nope/a.array_record",),
                   validation_paths=("/nope/b.array_record",))
  with pytest.raises(FileNotFoundError, match="/nope/a.array_record"):
    sources.open_inputs(config.data, VOCAB)


def test_tokenizer_of_another_size_fails_before_training(tmp_path):
  _write_texts(tmp_path / "src")
  path = tmp_path / "m.model"
  tok_lib.train_tokenizer([(tmp_path / "src" / f"doc{i}.txt").read_text()
                           for i in range(40)], 500, path)
  config = _config(tmp_path, source="files", paths=(str(tmp_path / "src"),),
                   tokenizer=str(path), validation_fraction=0.3)
  with pytest.raises(tok_lib.TokenizerError, match="500 pieces.*vocab_size "
                     f"is {VOCAB}"):
    loader.make_loaders(config)


@pytest.mark.parametrize("data,match", [
    (dict(source="web"), "source='web' is unknown"),
    (dict(source="files"), "needs data.paths"),
    (dict(source="tfds"), "needs data.tfds_name"),
    (dict(source="tokens"), "needs data.paths"),
])
def test_incomplete_data_configs_are_named(tmp_path, data, match):
  config = _config(tmp_path, **data)
  with pytest.raises(pl.PipelineError, match=match):
    sources.open_inputs(config.data, VOCAB)
