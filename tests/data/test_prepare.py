"""`iiet prepare` (Apache Beam) and `data.mixture`: token shards that do not
depend on the worker count, survive a kill, refuse bad input and another
tokenizer; mixtures whose token shares follow the weights and resume exactly.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zstandard

from iiet_jax.data import mixture as mixture_lib
from iiet_jax.data import pipeline as pl
from iiet_jax.data import prepare as prep
from iiet_jax.data import sample_corpus
from iiet_jax.data import sources
from iiet_jax.data import token_shards
from iiet_jax.data import tokenizer as tok_lib
from iiet_jax.errors import UserError
from training import (ROOT, load_lm_config, run_config, stop_after,
                      tensorboard_events)

VOCAB = 320
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu "
         "nu xi omicron pi rho sigma tau upsilon phi chi psi omega").split()


def _zst(path: Path, lines: list[str]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(zstandard.ZstdCompressor().compress(
      "".join(line + "\n" for line in lines).encode()))


def _documents(rng: random.Random, count: int, low: int, high: int):
  return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))
          for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> str:
  """A small BPE model trained on the word lists below, given to prepare."""
  path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
  texts = _documents(random.Random(0), 400, 5, 60)
  tok_lib.train_tokenizer(texts, VOCAB, path, num_threads=1)
  return str(path)


@pytest.fixture(scope="module")
def slimpajama(tmp_path_factory) -> Path:
  """Seven .jsonl.zst source folders and a Parquet one (sample_corpus)."""
  root = tmp_path_factory.mktemp("slimpajama")
  texts = _documents(random.Random(1), 8 * 3 * 6, 5, 200)
  sample_corpus.write(str(root), files_per_source=3, docs_per_file=6,
                      texts=texts)
  return root


def _config(data_dir: Path, tokenizer: str | None = None, **mixture):
  config = load_lm_config("model=transformer,size=tiny")
  config.model.vocab_size = VOCAB
  data = config.data
  data.source, data.data_dir = "files", str(data_dir)
  data.validation_fraction = 0.2
  data.tokenizer = tokenizer or ""
  data.mixture = mixture
  return config


def _slimpajama_mixture(root: Path) -> dict:
  names = [*sample_corpus.SLIMPAJAMA, sample_corpus.PARQUET]
  return {n: {"paths": (str(root / n),),
              "weight": sample_corpus.SLIMPAJAMA.get(n, 2.0)} for n in names}


def _tree(folder: Path) -> dict[str, bytes]:
  """Every file the preparation keeps (logs aside), by relative path."""
  return {os.fspath(p.relative_to(folder)): p.read_bytes()
          for p in sorted(folder.rglob("*")) if p.is_file()
          and p.name not in ("iiet.log", "beam_workers.log")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, slimpajama, tokenizer) -> Path:
  """The SlimPajama-shaped corpus prepared by one worker."""
  config = _config(tmp_path_factory.mktemp("ref"), tokenizer,
                   **_slimpajama_mixture(slimpajama))
  return Path(prep.prepare(config.data, VOCAB, workers=1))


def test_prepared_metadata_counts_every_document_once(reference, slimpajama):
  metadata = json.loads((reference / "metadata.json").read_text())
  assert set(metadata["sources"]) == {*sample_corpus.SLIMPAJAMA, "parquet"}
  tokenizer = tok_lib.carried_by(reference)
  for name, entry in metadata["sources"].items():
    assert entry["files"] == 3
    assert entry["train"]["documents"] + entry["validation"]["documents"] == 18
    # Every record is one document: bos, its pieces, eos, and the counts add
    # up to the records actually stored.
    records = tokens = 0
    for split in ("train", "validation"):
      if not entry[split]["shards"]:
        continue
      source = token_shards.open_split(reference, metadata, name, split)
      for i in range(len(source)):
        ids = sources.TokenRecordIds().map(source[i])
        assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
        records, tokens = records + 1, tokens + len(ids)
    assert records == 18
    assert tokens == entry["train"]["tokens"] + entry["validation"]["tokens"]
  # The texts decode back: the first train record of a source is a document
  # of that source's first file.
  first = token_shards.open_split(reference, metadata, "RedPajamaC4", "train")
  text = tokenizer.decode(sources.TokenRecordIds().map(first[0])[1:-1])
  lines = zstandard.ZstdDecompressor().decompress(
      (slimpajama / "RedPajamaC4" / "chunk-0000.jsonl.zst").read_bytes(),
      max_output_size=1 << 24).decode().splitlines()
  assert text in [json.loads(line)["text"] for line in lines]
  assert metadata["tokenizer"]["sha256"] == tok_lib.fingerprint(tokenizer)


def test_two_workers_write_the_same_shards_as_one(tmp_path, reference,
                                                  slimpajama, tokenizer):
  config = _config(tmp_path, tokenizer, **_slimpajama_mixture(slimpajama))
  folder = Path(prep.prepare(config.data, VOCAB, workers=2))
  assert folder.name == reference.name
  # Both worker processes took part, and the output is byte for byte equal.
  log = (folder / "beam_workers.log").read_text()
  assert log.count("harness starting") == 2
  assert _tree(folder) == _tree(reference)


def test_a_rerun_after_a_crash_finishes_without_losing_or_repeating(
    tmp_path, reference, slimpajama, tokenizer):
  config = _config(tmp_path, tokenizer, **_slimpajama_mixture(slimpajama))
  folder = Path(prep.prepare(config.data, VOCAB, workers=1))
  # What a kill leaves: no metadata, some files never done (no marker), one
  # done up to its shards but not its marker, half-written files.
  (folder / "metadata.json").unlink()
  for name in ("RedPajamaBook-00001", "parquet-00002", "RedPajamaC4-00000"):
    (folder / "parts" / f"{name}.json").unlink()
  (folder / "parquet" / "train-00002.arrayrecord").unlink()
  partial = folder / "RedPajamaBook" / ".train-00001.arrayrecord.partial-99"
  partial.write_bytes(b"half a shard")
  (folder / "parts" / ".RedPajamaBook-00001.json.partial-99").write_text("{")
  # train refuses the unfinished folder rather than reading it.
  with pytest.raises(UserError, match="unfinished `iiet prepare`"):
    sources.open_inputs(config.data, VOCAB)
  prep.prepare(config.data, VOCAB, workers=1)
  assert _tree(folder) == _tree(reference)


@pytest.mark.slow
def test_a_killed_prepare_command_resumes_to_the_same_output(tmp_path,
                                                            tokenizer):
  # A real SIGKILL of `iiet prepare` while it writes, then the same command;
  # against the same corpus prepared in one go.
  root = tmp_path / "corpus"
  sample_corpus.write(str(root), files_per_source=20, docs_per_file=20,
                      texts=_documents(random.Random(6), 8 * 400, 5, 200))
  seven = {n: {"paths": (str(root / n),), "weight": w}
           for n, w in sample_corpus.SLIMPAJAMA.items()}
  reference = Path(prep.prepare(
      _config(tmp_path / "ref", tokenizer, **seven).data, VOCAB))
  args = [sys.executable, "-m", "iiet_jax.main", "prepare",
          f"--config=configs/mixture.py:model=transformer,size=tiny,"
          f"root={root}", f"--config.data.data_dir={tmp_path / 'out'}",
          f"--config.data.tokenizer={tokenizer}",
          f"--config.model.vocab_size={VOCAB}",
          "--config.data.validation_fraction=0.2"]
  folder = Path(token_shards.location(
      _config(tmp_path / "out", tokenizer, **seven).data))
  assert folder.name == reference.name
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  process = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE,
                             start_new_session=True)
  parts = folder / "parts"
  deadline = time.monotonic() + 120
  while not parts.exists() or len(list(parts.glob("*.json"))) < 10:
    assert process.poll() is None, process.stderr.read().decode()
    assert time.monotonic() < deadline
    time.sleep(0.005)
  os.killpg(process.pid, signal.SIGKILL)
  process.wait()
  assert not (folder / "metadata.json").exists()   # killed part way
  assert len(list(parts.glob("*.json"))) < 140
  done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True,
                        text=True)
  assert done.returncode == 0, done.stderr
  assert "(0 done before)" not in done.stderr
  assert _tree(folder) == _tree(reference)


# --- bad inputs: one clear error each, nothing taken for complete ---------

def _one_source(tmp_path: Path, lines: list[str] | None = None) -> Path:
  lines = lines or [json.dumps({"text": t})
                    for t in _documents(random.Random(2), 12, 5, 30)]
  _zst(tmp_path / "src" / "a.jsonl.zst", lines)
  return tmp_path / "src"


@pytest.mark.parametrize("case", ["corrupt_frame", "not_json", "no_field",
                                  "empty"])
def test_bad_input_is_one_error_naming_file_and_line(tmp_path, tokenizer,
                                                     case):
  src = _one_source(tmp_path)
  bad = src / "b.jsonl.zst"
  good_lines = [json.dumps({"text": "zeta eta theta"})] * 3
  if case == "corrupt_frame":
    _zst(bad, good_lines * 400)
    data = bad.read_bytes()
    bad.write_bytes(data[:len(data) // 2] + bytes(64) + data[len(data) // 2:])
    expected = r"b\.jsonl\.zst cannot be decompressed after line \d+"
  elif case == "not_json":
    _zst(bad, good_lines + ["{not json"])
    expected = r"b\.jsonl\.zst line 4 is not valid JSON"
  elif case == "no_field":
    _zst(bad, good_lines + [json.dumps({"content": "x"})])
    expected = r"b\.jsonl\.zst line 4 has no text field 'text'"
  else:
    shutil.rmtree(src)
    _zst(src / "a.jsonl.zst", [json.dumps({"text": " "})] * 3)
    expected = r"Source 'corpus' .* holds no train documents: .* 3 empty"
  config = _config(tmp_path / "out", tokenizer)
  config.data.paths = (str(src),)
  with pytest.raises(UserError, match=expected) as err:
    prep.prepare(config.data, VOCAB)
  assert "\n" not in str(err.value)
  folder = Path(token_shards.location(config.data))
  assert not (folder / "metadata.json").exists()
  if case == "empty":
    return
  # The good file is kept; fixed, the rerun completes with every document.
  assert (folder / "parts" / "corpus-00000.json").exists()
  _zst(bad, good_lines)
  prep.prepare(config.data, VOCAB)
  metadata = json.loads((folder / "metadata.json").read_text())
  entry = metadata["sources"]["corpus"]
  assert entry["train"]["documents"] + entry["validation"]["documents"] == 15
  assert not (folder / "errors").exists()


@pytest.mark.parametrize("weight, expected", [
    (0, r"data\.mixture\.b\.weight=0 must be a positive number"),
    (-1.5, r"data\.mixture\.b\.weight=-1\.5 must be a positive number"),
    (float("nan"), r"data\.mixture\.b\.weight=nan must be")])
def test_a_weight_that_is_not_positive_is_refused(tmp_path, tokenizer, weight,
                                                  expected):
  src = _one_source(tmp_path)
  config = _config(tmp_path / "out", tokenizer,
                   a={"paths": (str(src),), "weight": 1.0},
                   b={"paths": (str(src),), "weight": weight})
  with pytest.raises(mixture_lib.MixtureError, match=expected):
    prep.prepare(config.data, VOCAB)
  with pytest.raises(mixture_lib.MixtureError, match=expected):
    sources.open_inputs(config.data, VOCAB)


def test_a_missing_source_is_named(tmp_path, tokenizer):
  src = _one_source(tmp_path)
  config = _config(tmp_path / "out", tokenizer,
                   a={"paths": (str(src),), "weight": 1.0},
                   gone={"paths": (str(tmp_path / "nowhere"),), "weight": 1})
  with pytest.raises(UserError, match=r"Source 'gone': Corpus path "
                     r".*nowhere does not exist"):
    prep.prepare(config.data, VOCAB)
  assert not token_shards.location(config.data).exists()


# --- the tokenizer --------------------------------------------------------

def test_train_refuses_shards_of_another_tokenizer(tmp_path, tokenizer):
  src = _one_source(tmp_path)
  config = _config(tmp_path / "out", tokenizer)
  config.data.paths = (str(src),)
  prep.prepare(config.data, VOCAB)
  # The same tokenizer, or none named: the shards' own is used.
  for given in (tokenizer, ""):
    config.data.tokenizer = given
    inputs = sources.open_inputs(config.data, VOCAB)
    assert tok_lib.same(inputs.tokenizer, tok_lib.load_tokenizer(tokenizer))
  other = tmp_path / "other.model"
  tok_lib.train_tokenizer(_documents(random.Random(5), 300, 5, 40), VOCAB,
                          other, num_threads=1)
  config.data.tokenizer = str(other)
  with pytest.raises(tok_lib.TokenizerError,
                     match=r"made with the tokenizer .*tokenizer\.model.*"
                     r"data\.tokenizer=.*other\.model is another"):
    sources.open_inputs(config.data, VOCAB)
  # Preparing the same corpus again with it is refused too.
  with pytest.raises(prep.PrepareError, match="with another tokenizer"):
    prep.prepare(config.data, VOCAB)


def test_without_a_tokenizer_one_is_trained_first(tmp_path):
  src = _one_source(tmp_path, [json.dumps({"text": t}) for t in _documents(
      random.Random(3), 200, 20, 60)])
  config = _config(tmp_path / "out")
  config.data.paths = (str(src),)
  folder = Path(prep.prepare(config.data, VOCAB))
  metadata = json.loads((folder / "metadata.json").read_text())
  assert metadata["tokenizer"]["from"].startswith("trained on a sample")
  assert tok_lib.carried_by(folder).vocab_size == VOCAB


def test_a_source_without_validation_documents_is_left_out_of_validation(
    tmp_path, tokenizer):
  from iiet_jax.data import documents as docs_lib
  src = _one_source(tmp_path)
  lone = next(t for t in _documents(random.Random(7), 50, 5, 30)
              if docs_lib.split_of(t, 0.2) == "train")
  _zst(tmp_path / "lone" / "a.jsonl.zst", [json.dumps({"text": lone})])
  config = _config(tmp_path / "out", tokenizer,
                   a={"paths": (str(src),), "weight": 1.0},
                   lone={"paths": (str(tmp_path / "lone"),), "weight": 1.0})
  prep.prepare(config.data, VOCAB)
  inputs = sources.open_inputs(config.data, VOCAB)
  assert len(inputs.train) == 2 and len(inputs.rates) == 2
  # Validation reads the one source that holds validation documents.
  folder = token_shards.location(config.data)
  metadata = token_shards.read_metadata(folder)
  assert metadata["sources"]["lone"]["validation"]["documents"] == 0
  held = token_shards.open_split(folder, metadata, "a", "validation")
  assert [inputs.validation[i] for i in range(len(inputs.validation))] == \
      [held[i] for i in range(len(held))]


def test_a_mixture_needs_prepared_shards(tmp_path, tokenizer):
  src = _one_source(tmp_path)
  config = _config(tmp_path / "out", tokenizer,
                   a={"paths": (str(src),), "weight": 1.0})
  with pytest.raises(UserError, match=r"run `iiet prepare` with this run's "
                     r"--config flags first"):
    sources.open_inputs(config.data, VOCAB)


# --- mixtures -------------------------------------------------------------

@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tokenizer):
  """Three sources of short, medium and long documents, prepared; token
  shares 0.5 / 0.3 / 0.2."""
  root = tmp_path_factory.mktemp("mix")
  rng = random.Random(4)
  lengths = {"short": (3, 12), "medium": (15, 40), "long": (40, 120)}
  for name, (low, high) in lengths.items():
    for f in range(2):
      _zst(root / name / f"{f}.jsonl.zst", [json.dumps({"text": t}) for t in
                                           _documents(rng, 150, low, high)])
  weights = {"short": 5.0, "medium": 3.0, "long": 2.0}
  config = _config(root / "out", tokenizer,
                   **{n: {"paths": (str(root / n),), "weight": w}
                      for n, w in weights.items()})
  config.batch_size, config.seq_len = 8, 64
  prep.prepare(config.data, VOCAB)
  return config


def _train(config, inputs):
  spec = pl.PipelineConfig.from_config(config)
  return pl.TrainIterator(pl.train_dataset(
      inputs.train, inputs.to_ids, spec, sources=inputs.sources,
      rates=inputs.rates))


def test_mixture_token_shares_follow_the_weights(mixed):
  inputs = sources.open_inputs(mixed.data, VOCAB)
  assert inputs.sources == ("long", "medium", "short")
  metadata = token_shards.read_metadata(token_shards.location(mixed.data))
  it = _train(mixed, inputs)
  real = 0
  for _ in range(150):
    batch = next(it)
    assert "source" not in batch
    real += int(batch["mask"].sum())
  counts = it.source_tokens()
  total = sum(counts.values())
  assert total == real   # every token counted once, padding never
  # Sampling error of a share when documents are drawn at the given rates:
  # binomial in the number of documents, times the mean document length.
  expected = {"short": 0.5, "medium": 0.3, "long": 0.2}
  for k, name in enumerate(inputs.sources):
    train = metadata["sources"][name]["train"]
    mean = train["tokens"] / train["documents"]
    docs = total * expected[name] / mean
    sigma = np.sqrt(docs * (1 - inputs.rates[k])) * mean / total
    assert abs(counts[name] / total - expected[name]) < 4 * sigma + 0.01, (
        name, counts[name] / total, expected[name], sigma)


def test_mixture_resumes_exactly_mid_way(mixed):
  inputs = sources.open_inputs(mixed.data, VOCAB)
  it = _train(mixed, inputs)
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))   # as checkpointed
  counts = it.source_tokens()
  expected = [next(it) for _ in range(5)]
  resumed = _train(mixed, sources.open_inputs(mixed.data, VOCAB))
  resumed.set_state(state)
  assert resumed.source_tokens() == counts
  for want in expected:
    got = next(resumed)
    assert want.keys() == got.keys()
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  assert resumed.source_tokens() == it.source_tokens()


def test_the_same_seed_gives_the_same_mixture_and_another_does_not(mixed):
  inputs = sources.open_inputs(mixed.data, VOCAB)
  first = [next(_train(mixed, inputs))["tokens"] for _ in range(2)]
  np.testing.assert_array_equal(first[0], first[1])
  mixed.data.seed = 1
  try:
    other = next(_train(mixed, inputs))["tokens"]
  finally:
    mixed.data.seed = None
  assert not np.array_equal(first[0], other)


@pytest.mark.slow
def test_a_mixture_run_logs_tokens_per_source_and_resumes_them(tmp_path,
                                                               mixed):
  from iiet_jax import stages
  config = run_config(tmp_path / "data", "transformer", total_steps=8)
  config.model.vocab_size = VOCAB
  for key in ("source", "data_dir", "validation_fraction", "tokenizer",
              "mixture"):
    config.data[key] = mixed.data[key]
  config.data.paths = config.data.validation_paths = ()

  def tokens(workdir):
    rows = [json.loads(line) for line in
            (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: ({k: v for k, v in r.items()
                         if k.startswith("tokens/")}, r["loss"])
            for r in rows if "tokens/short" in r}

  stages.train(config, tmp_path / "straight")
  with stop_after(3):
    stages.train(config, tmp_path / "resumed")
  stages.train(config, tmp_path / "resumed")
  straight, resumed = tokens(tmp_path / "straight"), tokens(tmp_path /
                                                            "resumed")
  assert sorted(straight) == list(range(1, 9))
  # After the resume, the counts (and the batches: the losses) go on as if
  # the run had never stopped.
  for step in range(4, 9):
    assert resumed[step] == straight[step]
  counts = [sum(straight[s][0].values()) for s in range(1, 9)]
  assert all(b > a for a, b in zip(counts, counts[1:]))
  assert all(v > 0 for v in straight[8][0].values())
  assert counts[-1] <= 8 * config.batch_size * config.seq_len
  tags = {v.tag for e in tensorboard_events(tmp_path / "straight")
          for v in e.summary.value}
  assert {"train/tokens/short", "train/tokens/medium",
          "train/tokens/long"} <= tags
