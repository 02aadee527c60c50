"""Grain input pipelines: documents in, packed [B, T] batches out.

Per stream (see below), in this order:

  source -> shuffle(seed) -> repeat -> slice(stream) -> tokenize   MapDataset
    -> split documents longer than T -> pack -> batch               IterDataset

A mixture (mixture.py) shuffles, repeats and tokenises each source, mixes
them, then slices the streams; its tokens carry their source's index through
packing, counted (`mixture.SourceTokens`) and dropped before the batch leaves.

then the process's streams are zipped into its rows of the global batch and
prefetched by `workers` processes. Packing is `concat` (documents joined and
cut every T tokens; rows are dense and attention crosses documents) or
`first_fit` (whole documents placed into rows, zero-padded; the batch carries
`segment_ids` (0 = padding), `positions` and `mask` so attention and RoPE
respect document boundaries). A document never loses tokens: one longer
than T is cut into T-token pieces first.

Streams make the global batch independent of the number of processes: with
S streams, global rows [s*B/S, (s+1)*B/S) come from stream s, which reads
every S-th document of the shuffled corpus. Process i of N runs streams
[i*S/N, (i+1)*S/N), so its rows are exactly its slice of the batch a single
process would produce, whatever N divides S. `streams=0` means one per
process. The stream output also depends on `workers` (each worker packs its
own slice), so keep the worker count fixed to resume a run exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Sequence

from absl import flags
import grain
import numpy as np

from iiet_jax.data import mixture as mixture_lib
from iiet_jax.data import tokenizer as tok_lib
from iiet_jax.errors import UserError

PACKINGS = ("first_fit", "concat")
PACKED_KEYS = ("tokens", "positions", "segment_ids", "mask")


class PipelineError(UserError, ValueError):
  """Pipeline settings that cannot produce the requested batches."""

  kind = "Data"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  batch_size: int          # global rows per step
  seq_len: int             # T
  packing: str = "first_fit"
  packing_bins: int = 0    # first_fit rows packed at once; 0: rows per stream
  seed: int = 0
  streams: int = 0         # 0: one per process
  workers: int = 0         # multiprocess prefetch; 0 reads in this process
  worker_buffer: int = 2   # batches each worker keeps ready

  def __post_init__(self):
    if self.packing not in PACKINGS:
      raise PipelineError(f"packing={self.packing!r} is unknown; choose one "
                          f"of {', '.join(PACKINGS)}.")
    for name in ("batch_size", "seq_len"):
      if getattr(self, name) < 1:
        raise PipelineError(f"{name}={getattr(self, name)} must be >= 1.")
    for name in ("streams", "workers", "packing_bins"):
      if getattr(self, name) < 0:
        raise PipelineError(f"{name}={getattr(self, name)} must be >= 0.")

  @classmethod
  def from_config(cls, config) -> "PipelineConfig":
    """From a run config: its batch shape, data order seed (`data.seed`,
    else `seed`) and `data` block."""
    data = config.data
    seed = data.get("seed")
    return cls(batch_size=config.batch_size, seq_len=config.seq_len,
               packing=data.packing, packing_bins=data.packing_bins,
               seed=config.seed if seed is None else seed,
               streams=data.streams, workers=data.workers)

  def batch_keys(self) -> tuple[str, ...]:
    return PACKED_KEYS if self.packing == "first_fit" else ("tokens", "mask")


def stream_layout(config: PipelineConfig, process_index: int,
                  process_count: int) -> tuple[range, int]:
  """The streams this process runs and the rows each contributes."""
  streams = config.streams or process_count
  if streams % process_count:
    raise PipelineError(
        f"streams={streams} does not split over {process_count} processes; "
        f"set data.streams to a multiple of {process_count}.")
  if config.batch_size % streams:
    raise PipelineError(
        f"batch_size={config.batch_size} does not split into {streams} "
        f"streams; set data.streams to a divisor of {config.batch_size}.")
  per_process = streams // process_count
  first = process_index * per_process
  return range(first, first + per_process), config.batch_size // streams


class Tokenize(grain.transforms.Map):
  """A text record -> int32 ids: bos, the text's pieces, eos."""

  def __init__(self, tokenizer: tok_lib.Tokenizer, text_field: str = "text"):
    self.tokenizer = tokenizer
    self.text_field = text_field

  def __call__(self, record) -> np.ndarray:
    return self.map(record)

  def map(self, record) -> np.ndarray:
    text = record[self.text_field]
    if isinstance(text, bytes):
      text = text.decode("utf-8")
    ids = self.tokenizer.encode(text)
    return np.asarray([self.tokenizer.bos_id, *ids, self.tokenizer.eos_id],
                      np.int32)


class SplitLong(grain.experimental.FlatMapTransform):
  """A document (ids, or a dict of per-token arrays) -> pieces of at most
  `seq_len` tokens, in order, none lost."""

  def __init__(self, seq_len: int):
    self.seq_len = seq_len
    self.max_fan_out = 1  # Informational: the iterator form is unbounded.

  def flat_map(self, doc) -> list[dict[str, np.ndarray]]:
    parts = doc if isinstance(doc, dict) else {"tokens": doc}
    n = len(parts["tokens"])
    return [{k: v[i:i + self.seq_len] for k, v in parts.items()}
            for i in range(0, n, self.seq_len)]


def _tagged(row: dict[str, np.ndarray], element) -> dict[str, np.ndarray]:
  if "source" in element:
    row["source"] = element["source"].astype(np.int32)
  return row


def _packed_row(element: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Grain's packing output -> our batch keys ([T] int32 each)."""
  segment_ids = element["tokens_segment_ids"].astype(np.int32)
  return _tagged({"tokens": element["tokens"].astype(np.int32),
                  "positions": element["tokens_positions"].astype(np.int32),
                  "segment_ids": segment_ids,
                  "mask": (segment_ids > 0).astype(np.int32)}, element)


def _dense_row(element: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Concat rows are full except, in a finite pass, the last one."""
  return _tagged({"tokens": element["tokens"].astype(np.int32),
                  "mask": (element["tokens_segment_ids"] > 0
                           ).astype(np.int32)}, element)


def pack(ds: grain.IterDataset, config: PipelineConfig,
         rows: int, seed: int, tagged: bool = False) -> grain.IterDataset:
  """Pieces of <= T tokens -> rows of exactly T tokens (with the "source"
  of each token when `tagged`)."""
  length = {"tokens": config.seq_len}
  if tagged:
    length["source"] = config.seq_len
  if config.packing == "concat":
    return grain.experimental.ConcatThenSplitIterDataset(
        ds, length_struct=length).map(_dense_row)
  return grain.experimental.FirstFitPackIterDataset(
      ds, length_struct=length, num_packing_bins=config.packing_bins or rows,
      seed=seed, shuffle_bins=False).map(_packed_row)


def _stack(rows: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _concat(batches: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def token_stream(source: grain.MapDataset, to_ids: Callable | None,
                 config: PipelineConfig) -> grain.IterDataset:
  """Documents (already in stream order) -> pieces of at most T tokens;
  `to_ids` None: the documents are ids already."""
  ds = (source if to_ids is None else source.map(to_ids)).to_iter_dataset()
  return grain.experimental.FlatMapIterDataset(ds, SplitLong(config.seq_len))


def _source_seed(seed: int, index: int) -> int:
  """Source `index`'s shuffle seed in a mixture (source 0: `seed`)."""
  return seed + 1_000_003 * index


def _documents(source, to_ids: Callable, config: PipelineConfig,
               rates: Sequence[float] | None) -> grain.MapDataset:
  """Every training document in order, as ids (module doc)."""
  if rates is None:
    if not len(source):
      raise PipelineError("The training source holds no documents.")
    return grain.MapDataset.source(source).shuffle(
        seed=config.seed).repeat().map(to_ids)
  parts = [grain.MapDataset.source(s).shuffle(seed=_source_seed(
      config.seed, k)).repeat().map(to_ids).map(mixture_lib.Tag(k))
           for k, s in enumerate(source)]
  return mixture_lib.mixed(parts, rates)


def train_dataset(source, to_ids: Callable, config: PipelineConfig,
                  process_index: int = 0, process_count: int = 1,
                  sources: Sequence[str] = (),
                  rates: Sequence[float] | None = None) -> grain.IterDataset:
  """This process's rows of every global batch, endlessly; see module doc.
  A mixture: `source` lists the sources named `sources`, mixed at `rates`
  (shares of documents)."""
  streams, rows = stream_layout(config, process_index, process_count)
  total = config.streams or process_count
  documents = _documents(source, to_ids, config, rates)
  parts = []
  for s in streams:
    ds = token_stream(documents.slice(slice(s, None, total)), None, config)
    ds = pack(ds, config, rows, seed=config.seed + s,
              tagged=rates is not None)
    parts.append(ds.batch(rows, drop_remainder=True, batch_fn=_stack))
  ds = (parts[0] if len(parts) == 1 else
        grain.experimental.ZipIterDataset(parts).map(_concat))
  if config.workers:
    if not flags.FLAGS.is_parsed():
      # Grain's workers read absl flags; outside `app.run` (notebooks,
      # tests) nothing has parsed them, so their defaults stand.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.workers, per_worker_buffer_size=config.worker_buffer))
  if rates is not None:
    ds = mixture_lib.SourceTokens(ds, sources)
  return ds


class TrainIterator:
  """Batches of a train dataset, with a JSON-serialisable position.

  `get_state()` after k batches, given to `set_state` of a fresh iterator of
  the same pipeline, makes it yield exactly batch k+1, k+2, ...
  """

  def __init__(self, dataset: grain.IterDataset):
    self._it = iter(dataset)

  @property
  def grain_iterator(self) -> grain.DatasetIterator:
    """The Grain iterator itself, for Orbax's Grain checkpoint handler."""
    return self._it

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._it)

  def get_state(self) -> dict[str, Any]:
    return self._it.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._it.set_state(state)

  def source_tokens(self) -> dict[str, int] | None:
    """Tokens each mixture source gave this process's batches so far."""
    tokens = getattr(self._it, "tokens", None)
    return tokens() if tokens is not None else None

  def close(self) -> None:
    close = getattr(self._it, "close", None)
    if close is not None:
      close()


class FirstTokens:
  """A document's ids -> its first `limit` ids (a picklable map)."""

  def __init__(self, to_ids: Callable, limit: int):
    self.to_ids, self.limit = to_ids, limit

  def __call__(self, record) -> np.ndarray:
    return self.to_ids(record)[:self.limit]


def validation_batches(source, to_ids: Callable, config: PipelineConfig,
                       max_batches: int | None = None,
                       process_index: int = 0, process_count: int = 1,
                       doc_tokens: int = 0) -> list[dict[str, np.ndarray]]:
  """One deterministic pass over the validation split, in stored order.

  `doc_tokens` > 0 reads only the first that many tokens of each document,
  so that no long document dominates a pass of many documents.

  Every process packs the same rows (so all agree on the number of batches,
  which they must: each batch is one collective step) and keeps its slice.
  The last batch is filled with empty rows (mask 0). Stops after
  `max_batches`.
  """
  if config.batch_size % process_count:
    raise PipelineError(f"batch_size={config.batch_size} does not split over "
                        f"{process_count} processes.")
  if doc_tokens < 0:
    raise PipelineError(f"eval_doc_tokens={doc_tokens} must be >= 0 (0 reads "
                        f"whole documents).")
  docs = (source if isinstance(source, grain.MapDataset)
          else grain.MapDataset.source(source))
  if doc_tokens:
    to_ids = FirstTokens(to_ids, doc_tokens)
  pieces = token_stream(docs, to_ids, config)
  limit = None if max_batches is None else max_batches * config.batch_size
  packed = pack(pieces, config, rows=config.batch_size, seed=config.seed)
  rows = []
  for row in packed:
    rows.append(row)
    if limit is not None and len(rows) >= limit:
      break
  tokens = sum(int(r["mask"].sum()) for r in rows)
  if tokens < config.batch_size * config.seq_len:
    raise PipelineError(
        f"The validation split holds {tokens} tokens, fewer than "
        f"{config.batch_size * config.seq_len} tokens, one batch of "
        f"{config.batch_size} x {config.seq_len}. Add validation documents "
        f"or raise the corpus's validation_fraction.")
  pad = -len(rows) % config.batch_size
  rows += [{k: np.zeros_like(v) for k, v in rows[0].items()}] * pad
  per = config.batch_size // process_count
  mine = slice(process_index * per, (process_index + 1) * per)
  return [_stack(rows[i:i + config.batch_size][mine])
          for i in range(0, len(rows), config.batch_size)]

