"""SentencePiece BPE tokenizer: load a `.model`, or train one and cache it.

`load_tokenizer` also reads a tokenizer.json (fast_tokenizer.JsonTokenizer,
same interface), for models imported with one and no `.model`.

Special ids follow Llama for bos/eos and put padding at 0:

  0 <pad>   packed and padded batches are zero-filled, so a 0 is never a
            real token and `tokens != pad_id` is the loss mask;
  1 <s>     bos;
  2 </s>    eos;
  3 <unk>   never produced in practice: byte fallback spells any character
            the vocabulary lacks as its UTF-8 bytes (ids 4..259).

Training keeps text exactly as written (no normalisation, no dummy prefix,
whitespace-only pieces allowed), so `decode(encode(s)) == s` for any `s`,
source code included. Models loaded from elsewhere keep their own ids;
read them from the properties rather than assuming the ones above.
"""

from __future__ import annotations

import io
import os
from typing import Iterable, Iterator, Sequence

from absl import logging
from etils import epath
import sentencepiece as spm

from iiet_jax import storage
from iiet_jax.errors import MissingInputError, TokenizerError, UserError

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
NUM_SPECIAL = 4
NUM_BYTES = 256

# SentencePiece drops training sentences longer than 4192 bytes; 1024
# characters are at most 4096 UTF-8 bytes, so no text is lost to that limit.
_MAX_SENTENCE_CHARS = 1024


class Tokenizer:
  """A loaded SentencePiece model. Picklable, for data-loading workers."""

  def __init__(self, model_proto: bytes, path: str = "<memory>"):
    self.path = path
    self._model_proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def model_proto(self) -> bytes:
    """The serialized SentencePiece model (what a .model file holds)."""
    return self._model_proto

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def pad_id(self) -> int:
    return self._sp.pad_id()

  def special_pieces(self) -> dict[str, str]:
    """The pieces of bos / eos / unk / pad, keyed as Hugging Face names them
    (those the model has: Llama-2's, for one, has no pad)."""
    sp = self._sp
    ids = {"bos_token": sp.bos_id(), "eos_token": sp.eos_id(),
           "unk_token": sp.unk_id(), "pad_token": sp.pad_id()}
    return {key: sp.id_to_piece(i) for key, i in ids.items() if i >= 0}

  def hf_files(self) -> dict[str, bytes]:
    """The tokenizer files of an export folder: this model, and the fast
    tokenizer converted from it that encodes to the same ids."""
    from iiet_jax.data import fast_tokenizer
    fast = fast_tokenizer.from_sentencepiece(self._model_proto, self.path)
    return {"tokenizer.model": self._model_proto,
            "tokenizer.json": fast.to_str(pretty=True).encode("utf-8")}

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without bos/eos (the pipeline adds those)."""
    return self._sp.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def __getstate__(self):
    return {"path": self.path, "model_proto": self._model_proto}

  def __setstate__(self, state):
    self.__init__(state["model_proto"], state["path"])

  def __repr__(self) -> str:
    return f"Tokenizer(path={self.path!r}, vocab_size={self.vocab_size})"


def load_tokenizer(path: epath.PathLike):
  """A SentencePiece `.model` or a tokenizers `.json`, by the suffix, from a
  local or remote path; both have the interface of `Tokenizer`."""
  path = epath.Path(path)
  if not path.exists():
    raise MissingInputError(
        f"No tokenizer at {path}. Pass the path of an existing SentencePiece "
        ".model or tokenizer.json, or build one with load_or_train().")
  if path.suffix not in (".json", ".model"):
    raise TokenizerError(
        f"data.tokenizer={path}: the suffix says neither a SentencePiece "
        f"model (.model) nor a tokenizers file (.json); rename it to say "
        f"which it is.")
  try:
    if path.suffix == ".json":
      from iiet_jax.data import fast_tokenizer
      return fast_tokenizer.JsonTokenizer.from_file(path)
    return Tokenizer(path.read_bytes(), os.fspath(path))
  except (UserError, OSError):
    raise
  except Exception as err:  # sentencepiece: RuntimeError; tokenizers: its own
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    kind = ("tokenizers JSON" if path.suffix == ".json"
            else "SentencePiece model")
    raise TokenizerError(
        f"{path} is not a readable {kind} file ({reason[:200]}); it may be "
        f"damaged or of another kind. Point --config.data.tokenizer at a "
        f"working one (a damaged cached one: delete it, and it is trained "
        f"again).") from None


def same(a, b) -> bool:
  """Whether two tokenizers are the same files (vocabulary and specials)."""
  return _carried_files(a) == _carried_files(b)


def _training_sentences(texts: Iterable[str], max_chars: int,
                        counts: dict[str, int]) -> Iterator[str]:
  """Cuts documents into line-aligned pieces SentencePiece will accept.

  Stops after `max_chars` characters: the tokenizer learns from a sample,
  the first part of the corpus, which is enough for merge statistics.
  """
  for text in texts:
    lines = text.splitlines(keepends=True)
    piece = ""
    for line in lines:
      counts["chars"] += len(line)
      while len(line) > _MAX_SENTENCE_CHARS:
        head, line = line[:_MAX_SENTENCE_CHARS], line[_MAX_SENTENCE_CHARS:]
        if piece:
          yield piece
        piece = head
      if len(piece) + len(line) > _MAX_SENTENCE_CHARS:
        yield piece
        piece = ""
      piece += line
      if counts["chars"] >= max_chars:
        break
    if piece:
      yield piece
    counts["documents"] += 1
    if counts["chars"] >= max_chars:
      return


def train_tokenizer(texts: Iterable[str], vocab_size: int,
                    out_path: epath.PathLike, *,
                    max_chars: int = 50_000_000,
                    character_coverage: float = 0.9995,
                    num_threads: int | None = None) -> Tokenizer:
  """Trains a byte-fallback BPE model on `texts` and writes it to `out_path`.

  Reads at most `max_chars` characters of `texts`. Byte fallback needs 256
  byte pieces plus the 4 special ones, so `vocab_size` must exceed 260.
  """
  minimum = NUM_SPECIAL + NUM_BYTES + 1
  if vocab_size < minimum:
    raise TokenizerError(
        f"vocab_size={vocab_size} leaves no room for merges: byte fallback "
        f"takes {NUM_SPECIAL + NUM_BYTES} ids. Use vocab_size >= {minimum}.")
  out_path = epath.Path(out_path)
  counts = {"chars": 0, "documents": 0}
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=_training_sentences(texts, max_chars, counts),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        character_coverage=character_coverage,
        num_threads=num_threads or min(os.cpu_count() or 1, 16),
        minloglevel=2)
  except RuntimeError as e:
    # Usually vocab_size does not suit the sample: too large for the merges
    # it offers, or too small for its distinct characters. SentencePiece's
    # message says which and gives the bound.
    raise TokenizerError(
        f"Training a {vocab_size}-piece tokenizer for {out_path} failed on "
        f"{counts['documents']} documents ({counts['chars']} characters, "
        f"sample capped at max_chars={max_chars}): {e}") from e
  # Whole, so an interrupted run never leaves a truncated model that the
  # next run would take for a cached one.
  storage.write_whole(out_path, model.getvalue())
  logging.info("Trained a %d-piece BPE tokenizer on %d documents (%d chars): "
               "%s", vocab_size, counts["documents"], counts["chars"],
               out_path)
  return Tokenizer(model.getvalue(), os.fspath(out_path))


def load_or_train(path: epath.PathLike, vocab_size: int, texts: Iterable[str],
                  **train_kwargs) -> Tokenizer:
  """The tokenizer cached at `path`, trained on `texts` first if missing.

  `texts` is only iterated when training, so a lazy generator over the corpus
  costs nothing on later runs. A cached model of another size is an error,
  never silently reused or overwritten.
  """
  path = epath.Path(path)
  if path.exists():
    tokenizer = load_tokenizer(path)
    if tokenizer.vocab_size != vocab_size:
      raise TokenizerError(
          f"The cached tokenizer {path} has vocab_size={tokenizer.vocab_size} "
          f"but vocab_size={vocab_size} was requested. Request "
          f"{tokenizer.vocab_size}, or delete {path} to train a new one.")
    logging.info("Reusing the cached tokenizer %s", path)
    return tokenizer
  return train_tokenizer(texts, vocab_size, path, **train_kwargs)


def check_vocab(tokenizer_vocab_size: int, model_vocab_size: int) -> None:
  """Fails before training when the model cannot embed every token id."""
  if tokenizer_vocab_size != model_vocab_size:
    raise TokenizerError(
        f"The tokenizer has {tokenizer_vocab_size} pieces but the model's "
        f"vocab_size is {model_vocab_size}. Set model vocab_size="
        f"{tokenizer_vocab_size}, or use a tokenizer of {model_vocab_size} "
        "pieces.")


# A run carries its tokenizer in its workdir, so every command that reads the
# run finds it without the corpus: the SentencePiece model as tokenizer.model,
# or a tokenizer.json with a tokenizer_config.json naming its special tokens
# (what `iiet import` carries from a Hugging Face folder, too).
CARRIED = ("tokenizer.model", "tokenizer.json")


def carried_by(folder: epath.PathLike):
  """The tokenizer a run's `folder` carries, or None when it carries none."""
  folder = epath.Path(folder)
  for name in CARRIED:
    if (folder / name).exists():
      return load_tokenizer(folder / name)
  return None


def fingerprint(tokenizer) -> str:
  """A sha256 of the files `carry` writes: equal exactly when `same`."""
  import hashlib
  digest = hashlib.sha256()
  for name, data in sorted(_carried_files(tokenizer).items()):
    digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "little"))
    digest.update(data)
  return digest.hexdigest()


def _carried_files(tokenizer) -> dict[str, bytes]:
  import json
  if isinstance(tokenizer, Tokenizer):
    return {"tokenizer.model": tokenizer.model_proto}
  # A tokenizer.json names no bos / eos; the config beside it does.
  return {**tokenizer.hf_files(), "tokenizer_config.json": json.dumps(
      tokenizer.special_pieces(), indent=2, sort_keys=True).encode("utf-8")}


def carry(tokenizer, folder: epath.PathLike) -> epath.Path:
  """Writes `tokenizer` into the run folder `folder` (each file written then
  renamed, so a kill leaves none half-written); returns its main file. A
  folder that already carries another tokenizer is refused: the run's
  checkpoints were trained on that one."""
  folder = epath.Path(folder)
  files = _carried_files(tokenizer)
  held = carried_by(folder)
  if held is not None:
    if _carried_files(held) != files:
      raise TokenizerError(
          f"{folder} carries the tokenizer {held.path} of the run saved "
          f"there, and this run's tokenizer ({tokenizer.path}) is another: "
          f"its token ids would not mean what the checkpoints learned. Use "
          f"that tokenizer (--config.data.tokenizer={held.path}), or a new "
          f"--workdir.")
    return epath.Path(held.path)
  # The config first: tokenizer.json is what marks the folder as carrying.
  for name in sorted(files, reverse=True):
    storage.write_whole(folder / name, files[name])
  return folder / next(n for n in CARRIED if n in files)
