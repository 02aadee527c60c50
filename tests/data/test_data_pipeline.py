"""Contracts of the Grain pipeline: packing, resume, host sharding, errors.

Documents are synthetic token ids that name themselves: token j of document
d is 1000 * d + j + 1, so any packed token says where it came from.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from iiet_jax.data import pipeline as pl
from iiet_jax.data import sources

T = 16
LENGTHS = [5, 40, 16, 1, 7, 33, 12, 3, 17, 9, 2, 64, 15, 8, 21, 4, 11, 6]


def _doc(d: int, n: int) -> np.ndarray:
  return np.arange(1, n + 1, dtype=np.int32) + 1000 * d


def _records(lengths=LENGTHS) -> list[bytes]:
  """Documents as token-record bytes: a picklable source for workers."""
  return [_doc(d, n).astype("<i4").tobytes() for d, n in enumerate(lengths)]


TO_IDS = sources.TokenRecordIds()


def _config(**kw) -> pl.PipelineConfig:
  return pl.PipelineConfig(**{"batch_size": 4, "seq_len": T, **kw})


def _segments(batch: dict[str, np.ndarray]):
  """(tokens, positions) of every segment of every row, checking ids."""
  for r in range(batch["tokens"].shape[0]):
    seg = batch["segment_ids"][r]
    used = seg[seg > 0]
    # Segments are numbered 1, 2, ... in row order; padding (0) comes last.
    assert list(np.unique(used)) == list(range(1, len(np.unique(used)) + 1))
    assert np.all(np.diff(seg[:len(used)]) >= 0) and not seg[len(used):].any()
    np.testing.assert_array_equal(batch["mask"][r], seg > 0)
    assert not batch["tokens"][r][seg == 0].any()
    for s in np.unique(used):
      yield batch["tokens"][r][seg == s], batch["positions"][r][seg == s]


def _pieces_by_doc(batches) -> dict[int, list[np.ndarray]]:
  docs: dict[int, list[np.ndarray]] = {}
  for batch in batches:
    for tokens, positions in _segments(batch):
      np.testing.assert_array_equal(positions, np.arange(len(tokens)))
      assert len(set(tokens // 1000)) == 1, "a segment mixes documents"
      docs.setdefault(int(tokens[0]) // 1000, []).append(tokens)
  return docs


def test_first_fit_keeps_every_token_once_in_order():
  batches = pl.validation_batches(_records(), TO_IDS, _config())
  docs = _pieces_by_doc(batches)
  assert sorted(docs) == list(range(len(LENGTHS)))
  for d, pieces in docs.items():
    pieces.sort(key=lambda p: p[0])
    # Long documents are cut every T tokens, never truncated or reordered.
    np.testing.assert_array_equal(np.concatenate(pieces),
                                  _doc(d, LENGTHS[d]))
    assert all(len(p) == T for p in pieces[:-1])
    assert all((p[0] - 1) % 1000 % T == 0 for p in pieces)


def test_concat_rows_are_the_documents_joined():
  batches = pl.validation_batches(_records(), TO_IDS, _config(packing="concat"))
  assert set(batches[0]) == {"tokens", "mask"}
  tokens = np.concatenate([b["tokens"].reshape(-1) for b in batches])
  mask = np.concatenate([b["mask"].reshape(-1) for b in batches])
  expected = np.concatenate([_doc(d, n) for d, n in enumerate(LENGTHS)])
  np.testing.assert_array_equal(tokens[mask > 0], expected)
  assert mask[:len(expected)].all() and not mask[len(expected):].any()


def test_train_stream_packs_whole_documents_and_reshuffles_epochs():
  config = _config(seed=3)
  it = pl.TrainIterator(pl.train_dataset(_records(), TO_IDS, config))
  batches = [next(it) for _ in range(30)]  # Several epochs.
  docs = _pieces_by_doc(batches)
  assert sorted(docs) == list(range(len(LENGTHS)))
  first_epoch = [int(t[0]) // 1000 for b in batches[:3] for t, _ in
                 _segments(b)]
  assert first_epoch != sorted(first_epoch), "the corpus was not shuffled"


@pytest.mark.parametrize("packing", pl.PACKINGS)
def test_same_seed_same_batches_other_seed_other_batches(packing):
  def first(seed):
    it = iter(pl.train_dataset(_records(), TO_IDS,
                               _config(packing=packing, seed=seed)))
    return np.stack([next(it)["tokens"] for _ in range(4)])
  np.testing.assert_array_equal(first(0), first(0))
  assert not np.array_equal(first(0), first(1))


def test_data_order_seed_defaults_to_the_run_seed_and_can_be_set_apart():
  """config.data.seed orders the documents; unset, config.seed does."""
  import ml_collections
  def resolved(seed, data_seed):
    data = dict(packing="first_fit", packing_bins=0, streams=0, workers=0,
                seed=data_seed)
    return pl.PipelineConfig.from_config(ml_collections.ConfigDict(dict(
        seed=seed, batch_size=4, seq_len=T, data=data))).seed
  assert resolved(3, None) == 3
  assert resolved(3, 0) == 0 and resolved(0, 5) == 5


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("packing,streams,workers", [
    ("first_fit", 0, 0), ("concat", 0, 0), ("first_fit", 2, 0),
    ("first_fit", 0, 2)])
def test_restore_gives_the_batches_of_an_uninterrupted_run(packing, streams,
                                                           workers):
  config = _config(packing=packing, streams=streams, workers=workers)
  make = lambda: pl.TrainIterator(pl.train_dataset(_records(), TO_IDS, config))
  it = make()
  _take(it, 7)
  state = json.loads(json.dumps(it.get_state()))  # Survives a round trip.
  expected = _take(it, 5)
  it.close()
  restored = make()
  restored.set_state(state)
  _assert_same(_take(restored, 5), expected)
  restored.close()


def test_restore_in_a_new_process(tmp_path):
  config = _config(streams=2)
  it = pl.TrainIterator(pl.train_dataset(_records(), TO_IDS, config))
  _take(it, 6)
  (tmp_path / "state.json").write_text(json.dumps(it.get_state()))
  expected = _take(it, 3)
  script = textwrap.dedent(f"""
      import json, sys
      import numpy as np
      sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})
      import test_data_pipeline as t
      from iiet_jax.data import pipeline as pl
      it = pl.TrainIterator(pl.train_dataset(t._records(), t.TO_IDS,
                                             t._config(streams=2)))
      it.set_state(json.load(open({str(tmp_path / 'state.json')!r})))
      np.save({str(tmp_path / 'next.npy')!r},
              np.stack([next(it)["tokens"] for _ in range(3)]))
  """)
  subprocess.run([sys.executable, "-c", script], check=True)
  np.testing.assert_array_equal(np.load(tmp_path / "next.npy"),
                                np.stack([b["tokens"] for b in expected]))


@pytest.mark.parametrize("packing", pl.PACKINGS)
def test_process_shards_make_up_the_single_process_batch(packing):
  config = _config(batch_size=8, streams=4, packing=packing)
  single = _take(iter(pl.train_dataset(_records(), TO_IDS, config)), 6)
  shards = [_take(iter(pl.train_dataset(_records(), TO_IDS, config, i, 2)), 6)
            for i in range(2)]
  for step, whole in enumerate(single):
    parts = [s[step] for s in shards]
    assert all(p["tokens"].shape == (4, T) for p in parts)
    for k in whole:
      np.testing.assert_array_equal(
          np.concatenate([p[k] for p in parts]), whole[k])
  # In the first epoch the two processes read disjoint documents.
  docs = [{int(t) // 1000 for b in s[:1] for t in b["tokens"].ravel() if t}
          for s in shards]
  assert docs[0] and docs[1] and not docs[0] & docs[1]


def test_validation_is_sharded_over_processes_and_padded():
  config = _config(batch_size=4)
  whole = pl.validation_batches(_records(), TO_IDS, config)
  parts = [pl.validation_batches(_records(), TO_IDS, config,
                                 process_index=i, process_count=2)
           for i in range(2)]
  assert len(parts[0]) == len(parts[1]) == len(whole)
  for w, a, b in zip(whole, *parts):
    np.testing.assert_array_equal(np.concatenate([a["tokens"], b["tokens"]]),
                                  w["tokens"])
  assert not whole[-1]["mask"][-1].any()  # Filled with an empty row.
  capped = pl.validation_batches(_records(), TO_IDS, config, max_batches=2)
  _assert_same(capped, whole[:2])


def test_validation_doc_tokens_keeps_each_documents_first_tokens():
  """Each document contributes exactly its first min(n, cap) ids."""
  cap = 10
  batches = pl.validation_batches(_records(), TO_IDS, _config(),
                                  doc_tokens=cap)
  docs = _pieces_by_doc(batches)
  assert sorted(docs) == list(range(len(LENGTHS)))
  for d, n in enumerate(LENGTHS):
    np.testing.assert_array_equal(np.concatenate(docs[d]),
                                  _doc(d, min(n, cap)))
  with pytest.raises(pl.PipelineError, match="eval_doc_tokens=-1"):
    pl.validation_batches(_records(), TO_IDS, _config(), doc_tokens=-1)


def test_validation_smaller_than_a_batch_is_an_error():
  with pytest.raises(pl.PipelineError, match="fewer than 64 tokens"):
    pl.validation_batches(_records([5, 9, 3]), TO_IDS, _config())


@pytest.mark.parametrize("kw,match", [
    (dict(packing="greedy"), "packing='greedy'.*first_fit"),
    (dict(seq_len=0), "seq_len=0"),
    (dict(workers=-1), "workers=-1"),
])
def test_bad_settings_are_named(kw, match):
  with pytest.raises(pl.PipelineError, match=match):
    _config(**kw)


def test_streams_must_fit_processes_and_batch():
  with pytest.raises(pl.PipelineError, match="streams=3 does not split over 2"):
    pl.train_dataset(_records(), TO_IDS, _config(streams=3), 0, 2)
  with pytest.raises(pl.PipelineError, match="batch_size=4 does not split"):
    pl.train_dataset(_records(), TO_IDS, _config(streams=8))


def test_empty_training_source_is_an_error():
  with pytest.raises(pl.PipelineError, match="no documents"):
    pl.train_dataset([], TO_IDS, _config())
