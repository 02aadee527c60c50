"""Contracts of the corpus builders: files in, disjoint ArrayRecord splits."""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

from iiet_jax.data import corpus
from iiet_jax.data import documents as docs_lib

tfds.disable_progress_bar()

VAL_FRACTION = 0.3
_LATIN1 = "café crème brûlée, déjà vu\n"


def _write_corpus(root: Path) -> dict[str, str]:
  """Writes .txt, .jsonl and .parquet files; returns {document key: text}."""
  expected = {}
  (root / "notes").mkdir(parents=True)
  for i in range(6):
    text = f"Plain note {i}: the quick brown fox {i * 7} jumps.\n" * (i + 1)
    (root / "notes" / f"note{i}.txt").write_text(text, encoding="utf-8")
    expected[f"notes/note{i}.txt"] = text
  # Latin-1 bytes are not UTF-8: read with replacement characters, counted.
  (root / "notes" / "legacy.txt").write_bytes(_LATIN1.encode("latin-1"))
  expected["notes/legacy.txt"] = _LATIN1.encode("latin-1").decode(
      "utf-8", errors="replace")
  (root / "notes" / "README.md").write_text("not a corpus suffix\n")

  lines = []
  for i in range(8):
    lines.append(json.dumps({"body": f"json record {i} ünïcode ✓", "n": i}))
    expected[f"records.jsonl:{len(lines)}"] = f"json record {i} ünïcode ✓"
  lines += ["", json.dumps({"body": "   "})]  # A blank line, an empty document.
  (root / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

  bodies = [f"parquet row {i} with some words" for i in range(7)] + [None]
  pq.write_table(pa.table({"body": bodies, "n": list(range(8))}),
                 root / "table.parquet")
  expected.update({f"table.parquet:{i}": b for i, b in enumerate(bodies) if b})
  return expected


def _records(builder, split: str) -> dict[str, str]:
  source = corpus.open_split(builder, split)
  rows = [source[i] for i in range(len(source))]
  return {r["id"].decode(): r["text"].decode("utf-8") for r in rows}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  expected = _write_corpus(root)
  builder = corpus.prepare(corpus.text_corpus_builder(
      root, tmp_path_factory.mktemp("tfds"), text_field="body",
      validation_fraction=VAL_FRACTION))
  return builder, expected, root


def test_every_document_lands_in_exactly_one_split(mixed):
  builder, expected, _ = mixed
  train = _records(builder, "train")
  validation = _records(builder, "validation")
  assert train and validation
  assert not set(train) & set(validation)
  assert {**train, **validation} == expected
  assert builder.info.splits["train"].num_examples == len(train)


def test_split_follows_the_content_hash(mixed):
  builder, _, _ = mixed
  for split in docs_lib.SPLITS:
    for text in _records(builder, split).values():
      assert docs_lib.split_of(text, VAL_FRACTION) == split


def test_build_log_counts_the_non_utf8_file(mixed):
  builder, expected, _ = mixed
  meta = builder.info.metadata
  assert meta["non_utf8_file_count"] == 1
  assert meta["non_utf8_files"] == ["notes/legacy.txt"]
  assert meta["files"] == 9  # 7 .txt, 1 .jsonl, 1 .parquet; README.md skipped.
  assert meta["empty_documents"] == 2  # The blank body and the null row.
  assert sum(meta["documents"].values()) == len(expected)
  assert "\ufffd" in expected["notes/legacy.txt"]


def test_rebuild_elsewhere_gives_the_same_splits(mixed, tmp_path, caplog):
  builder, _, root = mixed
  again = corpus.prepare(corpus.text_corpus_builder(
      root, tmp_path, text_field="body", validation_fraction=VAL_FRACTION))
  assert "1 of 9 files are not UTF-8" in caplog.text
  assert "notes/legacy.txt" in caplog.text
  assert again.builder_config.name == builder.builder_config.name
  for split in docs_lib.SPLITS:
    assert _records(again, split) == _records(builder, split)
  # Reading back by registered name sees the same prepared data.
  by_name = corpus.open_split(f"text_corpus/{again.builder_config.name}",
                              "validation", data_dir=tmp_path)
  assert len(by_name) == len(_records(builder, "validation"))


def test_glob_selects_files(mixed, tmp_path):
  _, expected, root = mixed
  builder = corpus.prepare(corpus.text_corpus_builder(
      f"{root}/notes/note*.txt", tmp_path, validation_fraction=0.5))
  ids = set(_records(builder, "train")) | set(_records(builder, "validation"))
  assert ids == {f"note{i}.txt" for i in range(6)}


def test_validation_fraction_is_respected():
  texts = [f"document number {i}" for i in range(4000)]
  share = sum(docs_lib.split_of(t, 0.1) == "validation" for t in texts) / 4000
  assert 0.08 < share < 0.12
  first = docs_lib.split_of("same text", 0.1)
  assert all(docs_lib.split_of("same text", 0.1) == first for _ in range(3))


def test_stdlib_slice(tmp_path):
  builder = corpus.prepare(corpus.python_stdlib_builder(
      tmp_path, max_files=20, validation_fraction=0.3))
  assert platform.python_version() in builder.builder_config.name
  assert builder.info.metadata["python_version"] == platform.python_version()
  assert builder.info.metadata["files"] == 20
  train = _records(builder, "train")
  validation = _records(builder, "validation")
  assert train and validation and not set(train) & set(validation)
  stdlib = Path(sysconfig.get_paths()["stdlib"])
  for key, text in {**train, **validation}.items():
    assert key.endswith(".py")
    assert (stdlib / key).read_text(encoding="utf-8") == text


def test_stdlib_default_config_skips_installed_packages():
  config = corpus.stdlib_config()
  assert config is corpus.PythonStdlib.BUILDER_CONFIGS[0]
  assert config.name == f"py{platform.python_version()}"
  files = docs_lib.find_files(config.paths, config.suffixes,
                              config.exclude_dirs)
  stdlib = Path(config.paths[0])
  relative = [Path(f).relative_to(stdlib) for f in files]
  assert Path("os.py") in relative and Path("json/__init__.py") in relative
  assert not any({"site-packages", "__pycache__"} & set(r.parts)
                 for r in relative)


def test_no_tensorflow_needed(mixed):
  assert importlib.util.find_spec("tensorflow") is None
  assert "tensorflow" not in sys.modules
  assert mixed[0].info.file_format.value == "array_record"


def test_missing_path_is_named(tmp_path):
  missing = tmp_path / "no_such_dir"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    corpus.prepare(corpus.text_corpus_builder(missing, tmp_path / "tfds"))


def test_empty_glob_is_named(tmp_path):
  pattern = f"{tmp_path}/*.jsonl"
  with pytest.raises(docs_lib.CorpusError, match=pattern.replace("*", r"\*")):
    corpus.prepare(corpus.text_corpus_builder(pattern, tmp_path / "tfds"))


def test_directory_without_corpus_files_is_an_error(tmp_path):
  (tmp_path / "src").mkdir()
  (tmp_path / "src" / "notes.md").write_text("markdown is not listed\n")
  with pytest.raises(docs_lib.CorpusError, match="no files ending in"):
    corpus.prepare(corpus.text_corpus_builder(tmp_path / "src",
                                              tmp_path / "tfds"))


def test_empty_corpus_is_an_error(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  (src / "blank.txt").write_text("  \n\n")
  (src / "empty.jsonl").write_text('{"text": ""}\n\n')
  with pytest.raises(docs_lib.CorpusError, match="is empty.*2 files"):
    corpus.prepare(corpus.text_corpus_builder(src, tmp_path / "tfds"))
  assert not list((tmp_path / "tfds").glob("text_corpus/*/1.0.0"))


def test_jsonl_without_the_text_field_names_it(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  (src / "a.jsonl").write_text('{"content": "hello"}\n')
  with pytest.raises(docs_lib.CorpusError, match=r"a.jsonl line 1.*'text'"):
    corpus.prepare(corpus.text_corpus_builder(src, tmp_path / "tfds"))


def test_validation_fraction_must_allow_both_splits(tmp_path):
  with pytest.raises(docs_lib.CorpusError, match="validation_fraction=0"):
    corpus.text_corpus_config(tmp_path, validation_fraction=0.0)


def test_lone_surrogate_escape_counts_as_invalid_text(tmp_path):
  (tmp_path / "a.jsonl").write_text('{"text": "ok \\ud800 end"}\n')
  stats = docs_lib.ReadStats()
  files = docs_lib.find_files([str(tmp_path)], corpus.DEFAULT_SUFFIXES)
  [doc] = docs_lib.read_documents(files, str(tmp_path), "text", stats)
  assert doc.text == "ok \ufffd\ufffd\ufffd end"
  assert stats.non_utf8_files == ["a.jsonl"]


def test_stdlib_config_unpickles_to_the_registered_object():
  # Data-loading workers unpickle the source; TFDS accepts a registered
  # config only as the very object it registered.
  import pickle
  config = corpus.stdlib_config()
  assert pickle.loads(pickle.dumps(config)) is config
  custom = corpus.text_corpus_config("/tmp/some/corpus")
  clone = pickle.loads(pickle.dumps(custom))
  assert clone is not custom and clone.paths == custom.paths


def _jsonl_shard(path: Path, texts, compress: str) -> Path:
  """`texts` as a `.jsonl`, `.jsonl.gz` or `.jsonl.zst` shard (zstd: one
  frame per line, as streaming writers emit them)."""
  import gzip
  import zstandard
  lines = [(json.dumps({"text": t, "meta": {"set": "x"}}) + "\n").encode()
           for t in texts]
  if compress == "gz":
    path.write_bytes(gzip.compress(b"".join(lines)))
  elif compress == "zst":
    frames = zstandard.ZstdCompressor()
    path.write_bytes(b"".join(frames.compress(line) for line in lines))
  else:
    path.write_bytes(b"".join(lines))
  return path


@pytest.mark.parametrize("compress", ["gz", "zst"])
def test_compressed_jsonl_shards_read_like_plain_ones(tmp_path, compress):
  texts = [f"document {i}: " + "word " * (i % 7 + 1) for i in range(50)]
  plain = _jsonl_shard(tmp_path / "a.jsonl", texts, "")
  packed = _jsonl_shard(tmp_path / f"b.jsonl.{compress}", texts, compress)
  read = lambda p: [(d.key.split(":")[1], d.text) for d in
                    docs_lib.read_documents([p], str(tmp_path), "text")]
  assert read(packed) == read(plain)
  assert [t for _, t in read(packed)] == texts
  found = docs_lib.find_files([str(tmp_path)], corpus.DEFAULT_SUFFIXES)
  assert [p.name for p in found] == ["a.jsonl", f"b.jsonl.{compress}"]


@pytest.mark.parametrize("compress", ["gz", "zst"])
def test_a_damaged_shard_is_named_after_the_lines_it_gave(tmp_path, compress):
  texts = [f"line {i} " + "x" * 200 for i in range(400)]
  shard = _jsonl_shard(tmp_path / f"s.jsonl.{compress}", texts, compress)
  data = shard.read_bytes()
  shard.write_bytes(data[:len(data) // 2])   # cut short mid-stream
  documents = docs_lib.read_documents([shard], str(tmp_path), "text")
  first = next(documents)   # streamed: the first lines come before the cut
  assert first.text == texts[0]
  with pytest.raises(docs_lib.CorpusError,
                     match=rf"{shard} cannot be decompressed after line \d+"):
    list(documents)
