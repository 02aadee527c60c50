"""`iiet prepare`: a corpus tokenised once, in parallel, into token shards.

  folder = prepare(config.data, config.model.vocab_size, workers=2)

(token_shards.py has the folder's layout; `iiet train` with the same config
reads it.) The work is one Apache Beam pipeline, TFDS's own engine for large
datasets, with one element per input file: whichever worker takes a file
tokenises it into that file's own shards. `workers` > 1 runs Beam's
DirectRunner with that many worker processes on this machine; `beam_options`
hands the pipeline to another runner instead (Dataflow, Flink, Spark; the
README has the Dataflow command), whose workers must read the inputs and
write the folder (gs:// paths).

Safe to kill: a file's shards are written under a temporary name and
renamed, then its part marker is written; a rerun skips files with a marker
and redoes the rest, so it ends with the same output, no document twice or
missing. metadata.json, written last, marks the whole folder complete.

Input errors (a damaged .zst frame, a line that is not JSON, a missing text
field) are collected per file, with the file and line, and reported together
once the pipeline ends; those files are retried by the next run.

The tokenizer: data.tokenizer when given; otherwise a BPE model of
`vocab_size` pieces trained, before any file is tokenised, on up to
data.tokenizer_sample_chars of train documents read from the files in a
fixed order that interleaves the sources (sorted by a hash of the path).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging as pylogging
import os
import tempfile
import threading
import time
from typing import Any, Iterator, Sequence

import apache_beam as beam
from etils import epath
import numpy as np

from iiet_jax.data import corpus
from iiet_jax.data import documents as docs_lib
from iiet_jax.data import mixture as mixture_lib
from iiet_jax.data import token_shards as layout
from iiet_jax.data import tokenizer as tok_lib
from iiet_jax.errors import LOGGER, UserError
from iiet_jax.storage import write_whole

_log = pylogging.getLogger(LOGGER)


class PrepareError(UserError, ValueError):
  """A corpus that `iiet prepare` cannot prepare."""

  kind = "Data"


@dataclasses.dataclass(frozen=True)
class Task:
  """One input file: the `index`-th file of `source`."""
  source: str
  index: int
  path: str
  root: str   # document keys are relative to it


def _tasks(data) -> list[Task]:
  tasks = []
  for source, paths in mixture_lib.sources(data).items():
    try:
      files = docs_lib.find_files(paths, corpus.DEFAULT_SUFFIXES, (),
                                  data.get("max_files"))
    except UserError as err:
      raise PrepareError(f"Source {source!r}: {err}") from None
    root = docs_lib.corpus_root(files)
    tasks += [Task(source, i, os.fspath(f), root)
              for i, f in enumerate(files)]
  return tasks


class _ShardWriter:
  """One ArrayRecord shard, written under a temporary name and renamed into
  place by `commit` (through a local file when the folder is remote)."""

  def __init__(self, final: epath.Path):
    from array_record.python import array_record_module
    self.final = final
    self.partial = final.parent / f".{final.name}.partial-{os.getpid()}"
    self.remote = "://" in os.fspath(final)
    if self.remote:
      fd, self.local = tempfile.mkstemp(suffix=".arrayrecord")
      os.close(fd)
    else:
      final.parent.mkdir(parents=True, exist_ok=True)
      self.local = os.fspath(self.partial)
    self.writer = array_record_module.ArrayRecordWriter(self.local,
                                                        "group_size:1")
    self.records = self.tokens = 0

  def write(self, ids: np.ndarray) -> None:
    self.writer.write(ids.astype("<i4").tobytes())
    self.records += 1
    self.tokens += len(ids)

  def commit(self) -> None:
    self.writer.close()
    if self.remote:
      epath.Path(self.local).copy(self.partial, overwrite=True)
      os.remove(self.local)
    self.partial.replace(self.final)   # a crash may have left one

  def discard(self) -> None:
    self.writer.close()
    for path in (self.local, os.fspath(self.partial)):
      if "://" not in path and os.path.exists(path):
        os.remove(path)


class TokenizeFile(beam.DoFn):
  """A Task -> its shards and part marker (nothing when already done)."""

  def __init__(self, folder: str, text_field: str,
               validation_fraction: float):
    self.folder, self.text_field = folder, text_field
    self.validation_fraction = validation_fraction

  def setup(self):
    self.tokenizer = tok_lib.carried_by(self.folder)

  def process(self, task: Task) -> Iterator[str]:
    folder = epath.Path(self.folder)
    marker = folder / layout.part_name(task.source, task.index)
    if marker.exists():
      return
    writers: dict[str, _ShardWriter] = {}
    stats = docs_lib.ReadStats()
    tok = self.tokenizer
    try:
      for doc in docs_lib.read_documents([epath.Path(task.path)], task.root,
                                         self.text_field, stats):
        split = docs_lib.split_of(doc.text, self.validation_fraction)
        if split not in writers:
          writers[split] = _ShardWriter(
              folder / task.source / layout.shard_name(split, task.index))
        writers[split].write(np.asarray(
            [tok.bos_id, *tok.encode(doc.text), tok.eos_id], np.int32))
    except UserError as err:
      for w in writers.values():
        w.discard()
      write_whole(folder / "errors" / f"{task.source}-{task.index:05d}.txt",
             str(err))
      return
    for w in writers.values():
      w.commit()
    write_whole(marker, json.dumps({
        "file": task.path,
        "empty_documents": stats.empty_documents,
        "non_utf8": bool(stats.non_utf8_files),
        **{split: {"documents": w.records, "tokens": w.tokens,
                   "path": f"{task.source}/{w.final.name}"}
           for split, w in writers.items()}}))
    yield task.path


def _sample_texts(tasks: Sequence[Task], data) -> Iterator[str]:
  """Train documents for the tokenizer, files in hash order (module doc)."""
  order = sorted(tasks, key=lambda t: hashlib.blake2b(
      t.path.encode(), digest_size=8).digest())
  for task in order:
    for doc in docs_lib.read_documents([epath.Path(task.path)], task.root,
                                       data.text_field):
      if docs_lib.split_of(doc.text, data.validation_fraction) == "train":
        yield doc.text


def _tokenizer(data, vocab_size: int, folder: epath.Path,
               tasks: Sequence[Task]) -> tuple[Any, str]:
  """(tokenizer, where it came from); see the module doc."""
  made = tok_lib.carried_by(folder) if folder.exists() else None
  if data.tokenizer:
    tokenizer = tok_lib.load_tokenizer(data.tokenizer)
    origin = os.fspath(data.tokenizer)
  elif made is not None:
    return made, "trained on a sample of the train documents"
  else:
    with tempfile.TemporaryDirectory() as tmp:
      _log.info("training a %d-piece tokenizer on up to %s characters of "
                "the train documents", vocab_size,
                f"{data.tokenizer_sample_chars:,}")
      tokenizer = tok_lib.train_tokenizer(
          _sample_texts(tasks, data), vocab_size,
          epath.Path(tmp) / "tokenizer.model",
          max_chars=data.tokenizer_sample_chars)
    origin = "trained on a sample of the train documents"
  if made is not None and tok_lib.fingerprint(made) != \
      tok_lib.fingerprint(tokenizer):
    raise PrepareError(
        f"{folder} was prepared (or partly prepared) with another tokenizer "
        f"than data.tokenizer={data.tokenizer}; shards of two tokenizers "
        f"must not mix. Delete {folder}, or prepare into another "
        f"data.data_dir.")
  return tokenizer, origin


def _pipeline(workers: int, beam_options: Sequence[str],
              folder: epath.Path) -> beam.Pipeline:
  """Beam's FnApiRunner with `workers` processes, or what `beam_options`
  name. (Beam's DirectRunner would first try to download its Prism runner.)
  The workers' own log lines go to FOLDER/beam_workers.log, not the screen."""
  from apache_beam.options.pipeline_options import PipelineOptions
  if beam_options:
    return beam.Pipeline(options=PipelineOptions(list(beam_options)))
  from apache_beam.runners.portability.fn_api_runner import fn_runner
  environment = None
  if workers > 1:
    import shlex
    import sys
    from apache_beam.transforms import environments
    log = shlex.quote(os.fspath(folder / "beam_workers.log"))
    environment = environments.SubprocessSDKEnvironment.from_command_string(
        f"{shlex.quote(sys.executable)} -m "
        f"apache_beam.runners.worker.sdk_worker_main 2>>{log}")
  return beam.Pipeline(
      runner=fn_runner.FnApiRunner(default_environment=environment),
      options=PipelineOptions([], direct_num_workers=workers))


class _Progress:
  """Logs files done and tokens/s every `every` seconds from the markers."""

  def __init__(self, folder: epath.Path, tasks: Sequence[Task],
               every: float = 10.0):
    self.folder, self.total, self.every = folder, len(tasks), every
    self.todo = {layout.part_name(t.source, t.index) for t in tasks}
    self.tokens, self.done, self.start = 0, 0, time.monotonic()
    self.stopped = threading.Event()
    self.thread = threading.Thread(target=self._run, daemon=True)

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.stopped.set()
    self.thread.join()

  def _run(self) -> None:
    while not self.stopped.wait(self.every):
      for name in [n for n in self.todo if (self.folder / n).exists()]:
        self.todo.discard(name)
        part = json.loads((self.folder / name).read_text())
        self.tokens += sum(part[s]["tokens"] for s in docs_lib.SPLITS
                           if s in part)
        self.done += 1
      seconds = time.monotonic() - self.start
      _log.info("prepare    %d/%d files  %s tokens  %s tokens/s", self.done,
                self.total, f"{self.tokens:,}",
                f"{self.tokens / seconds:,.0f}")


def _errors(folder: epath.Path) -> None:
  found = sorted((folder / "errors").glob("*.txt")) \
      if (folder / "errors").exists() else []
  if not found:
    return
  first = found[0].read_text()
  more = (f" ({len(found) - 1} more files failed too; their messages are in "
          f"{folder / 'errors'})" if len(found) > 1 else "")
  raise PrepareError(f"{first}{more}. Fix or remove the file, then run "
                     f"`iiet prepare` again: the files already tokenised are "
                     f"kept.")


def _metadata(folder: epath.Path, tasks: Sequence[Task], data, tokenizer,
              origin: str) -> dict[str, Any]:
  sources: dict[str, Any] = {}
  for task in tasks:
    part = json.loads((folder / layout.part_name(task.source,
                                                 task.index)).read_text())
    entry = sources.setdefault(task.source, {
        "files": 0, "empty_documents": 0, "non_utf8_files": 0,
        **{s: {"documents": 0, "tokens": 0, "shards": []}
           for s in docs_lib.SPLITS}})
    entry["files"] += 1
    entry["empty_documents"] += part["empty_documents"]
    entry["non_utf8_files"] += part["non_utf8"]
    for split in docs_lib.SPLITS:
      if split in part:
        entry[split]["documents"] += part[split]["documents"]
        entry[split]["tokens"] += part[split]["tokens"]
        entry[split]["shards"].append({"path": part[split]["path"],
                                       "records": part[split]["documents"]})
  for name, entry in sources.items():
    if not entry["train"]["documents"]:
      paths = mixture_lib.sources(data)[name]
      raise PrepareError(
          f"Source {name!r} ({list(paths)}) holds no train documents: its "
          f"{entry['files']} files give {entry['validation']['documents']} "
          f"validation and {entry['empty_documents']} empty documents "
          f"(text_field={data.text_field!r}). Add documents or remove the "
          f"source.")
  return {"format": layout.FORMAT,
          "tokenizer": {"sha256": tok_lib.fingerprint(tokenizer),
                        "vocab_size": tokenizer.vocab_size, "from": origin},
          "text_field": data.text_field,
          "validation_fraction": float(data.validation_fraction),
          "sources": sources}


def prepare(data, vocab_size: int, workers: int = 1,
            beam_options: Sequence[str] = ()) -> epath.Path:
  """Prepares what `data` names (once); returns its folder. See module doc."""
  if workers < 1:
    raise PrepareError(f"--workers={workers} must be >= 1.")
  if data.source != "files":
    raise PrepareError(
        f"iiet prepare reads data.source='files' (data.paths, or "
        f"data.mixture), not data.source={data.source!r}: the stdlib corpus "
        f"is small enough for `iiet train` to prepare itself, and 'tfds' / "
        f"'tokens' sources are prepared already.")
  mixture_lib.weights(data)   # checked before any work
  tasks = _tasks(data)
  folder = layout.location(data)
  tokenizer, origin = _tokenizer(data, vocab_size, folder, tasks)
  tok_lib.check_vocab(tokenizer.vocab_size, vocab_size)
  if layout.read_metadata(folder) is not None:
    _log.info("prepare    %s is prepared already (same tokenizer)", folder)
    return folder
  folder.mkdir(parents=True, exist_ok=True)
  tok_lib.carry(tokenizer, folder)
  # Left by an earlier run: its errors (those files are retried) and the
  # half-written files of a killed one.
  if (folder / "errors").exists():
    (folder / "errors").rmtree()
  for stale in [*folder.glob(".*.partial-*"), *folder.glob("*/.*.partial-*")]:
    stale.unlink()
  todo = [t for t in tasks
          if not (folder / layout.part_name(t.source, t.index)).exists()]
  sources = len(set(t.source for t in tasks))
  _log.info("prepare    %d files of %d source%s into %s (%d done before); "
            "%s", len(todo), sources, "s" if sources > 1 else "", folder,
            len(tasks) - len(todo),
            "runner from --beam_options" if beam_options
            else f"{workers} worker process{'es' if workers > 1 else ''}")
  if todo:
    fn = TokenizeFile(os.fspath(folder), data.text_field,
                      float(data.validation_fraction))
    with _Progress(folder, todo), _pipeline(workers, beam_options,
                                            folder) as pipeline:
      _ = (pipeline | beam.Create(todo) | beam.Reshuffle()
           | beam.ParDo(fn))
  _errors(folder)
  metadata = _metadata(folder, tasks, data, tokenizer, origin)
  write_whole(folder / layout.METADATA, json.dumps(metadata, indent=1))
  for name, entry in metadata["sources"].items():
    _log.info("prepare    %s: %d files, %s train tokens, %s "
              "validation tokens", name, entry["files"],
              f"{entry['train']['tokens']:,}",
              f"{entry['validation']['tokens']:,}")
  return folder
