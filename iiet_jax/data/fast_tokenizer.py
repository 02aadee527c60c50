"""tokenizer.json: our SentencePiece model converted, and a tokenizer.json
backend for the data pipeline and the read-only commands.

`from_sentencepiece` builds the `tokenizers` fast tokenizer that every export
carries. SentencePiece encodes BPE this way, and the converted one does too:

  normalise   the model's character map (none for "identity"), optional
              whitespace clean-up, optional dummy-prefix space, spaces -> "▁";
  no split    the whole normalised text is one sequence: SentencePiece does
              not pre-tokenise at encode time, so neither do we;
  merge       repeatedly join the adjacent pair whose concatenation is the
              best-scored piece; a `tokenizers` BPE merge table ranked by the
              score of the piece each merge makes applies the same order;
  bytes       a character outside the vocabulary becomes its UTF-8 byte
              pieces <0xXX> (byte fallback), or <unk> without it.

Special (control / unknown) pieces are special added tokens, the post-
processor prepends bos like our pipeline does, and the decoder undoes the
"▁" escape and byte fallback. `tokenizers` has no converter from a
SentencePiece proto (transformers has one, but it is not a core dependency
and rebuilds Llama's own defaults), so this module writes the few lines.

`JsonTokenizer` reads any tokenizer.json (Llama-3 ships no tokenizer.model)
with the interface of `tokenizer.Tokenizer`; its bos / eos / pad / unk are
the tokens named by the tokenizer_config.json (or special_tokens_map.json)
beside it, as in every Hugging Face folder.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from etils import epath
from sentencepiece import sentencepiece_model_pb2
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models,
                        normalizers, processors)

from iiet_jax.errors import TokenizerError

SPACE = "\u2581"  # SentencePiece's escaped space, "▁"
_Piece = sentencepiece_model_pb2.ModelProto.SentencePiece
_BPE = sentencepiece_model_pb2.TrainerSpec.BPE


def _proto(model_proto: bytes, source: str):
  proto = sentencepiece_model_pb2.ModelProto.FromString(model_proto)
  trainer = proto.trainer_spec
  refusals = {
      "is not a BPE model (only model_type=BPE converts; Unigram, word and "
      "char models do not)": trainer.model_type != _BPE,
      "treats whitespace as a suffix": trainer.treat_whitespace_as_suffix,
      "has user-defined pieces": any(
          p.type == _Piece.USER_DEFINED for p in proto.pieces),
      "has unused pieces": any(p.type == _Piece.UNUSED for p in proto.pieces),
  }
  for why, refused in refusals.items():
    if refused:
      raise TokenizerError(
          f"The SentencePiece model {source} {why}, which has no exact "
          f"tokenizer.json equivalent here. Train a byte-fallback BPE model "
          f"(iiet_jax.data.tokenizer.train_tokenizer) or give a "
          f"tokenizer.json directly (data.tokenizer=PATH/tokenizer.json).")
  return proto


def _merges(proto) -> list[tuple[str, str]]:
  """Every split of a normal piece into two normal pieces, best first.

  SentencePiece merges any adjacent pair whose concatenation is a piece, by
  that piece's score (ties: leftmost), so a merge ranks by the score of what
  it makes, then by piece id for a fixed order.
  """
  normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces)
            if p.type == _Piece.NORMAL}
  ranked = []
  for piece, (score, index) in normal.items():
    for cut in range(1, len(piece)):
      left, right = piece[:cut], piece[cut:]
      if left in normal and right in normal:
        ranked.append((-score, index, normal[left][1], normal[right][1],
                       left, right))
  ranked.sort()
  return [(left, right) for *_, left, right in ranked]


def _normalizer(proto):
  spec = proto.normalizer_spec
  steps = []
  if spec.precompiled_charsmap:
    steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
  if spec.remove_extra_whitespaces:
    # SentencePiece drops leading / trailing spaces and collapses runs of
    # them; only " ", other whitespace is left to the character map.
    steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""),
              normalizers.Replace(Regex(" {2,}"), " ")]
  if spec.add_dummy_prefix:
    steps.append(normalizers.Prepend(" "))
  if spec.escape_whitespaces:
    steps.append(normalizers.Replace(" ", SPACE))
  return normalizers.Sequence(steps) if steps else None


def from_sentencepiece(model_proto: bytes, source: str = "<memory>"
                       ) -> Tokenizer:
  """The fast tokenizer that encodes like the SentencePiece `model_proto`."""
  proto = _proto(model_proto, source)
  pieces = proto.pieces
  vocab = {p.piece: i for i, p in enumerate(pieces)}
  unk = [p.piece for p in pieces if p.type == _Piece.UNKNOWN]
  byte_fallback = proto.trainer_spec.byte_fallback
  if byte_fallback:
    missing = [b for b in range(256) if f"<0x{b:02X}>" not in vocab]
    if missing:
      raise TokenizerError(
          f"The SentencePiece model {source} has byte_fallback but lacks "
          f"{len(missing)} byte pieces (first <0x{missing[0]:02X}>); it is "
          f"not a model SentencePiece itself wrote.")
  tokenizer = Tokenizer(models.BPE(
      vocab=vocab, merges=_merges(proto), unk_token=unk[0] if unk else None,
      # SentencePiece reports a run of unknown characters as one <unk>.
      fuse_unk=True, byte_fallback=byte_fallback, dropout=None))
  tokenizer.normalizer = _normalizer(proto)
  # Control pieces never come out of text in SentencePiece; as special
  # tokens they decode away with skip_special_tokens.
  tokenizer.add_special_tokens([
      AddedToken(p.piece, special=True, normalized=False)
      for p in pieces if p.type in (_Piece.CONTROL, _Piece.UNKNOWN)])
  trainer = proto.trainer_spec
  if trainer.bos_id >= 0:
    bos = pieces[trainer.bos_id].piece
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
        special_tokens=[(bos, trainer.bos_id)])
  steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(),
           decoders.Fuse()]
  if proto.normalizer_spec.add_dummy_prefix:
    steps.append(decoders.Strip(content=" ", left=1, right=0))
  tokenizer.decoder = decoders.Sequence(steps)
  return tokenizer


SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
# Where a Hugging Face folder names its special tokens; the later file wins.
SPECIAL_FILES = ("special_tokens_map.json", "tokenizer_config.json")


def special_tokens_beside(path: epath.PathLike) -> dict[str, str]:
  """The bos / eos / unk / pad tokens the HF files next to `path` name."""
  found = {}
  for name in SPECIAL_FILES:
    config = epath.Path(path).parent / name
    if not config.exists():
      continue
    try:
      values = json.loads(config.read_text())
    except json.JSONDecodeError as err:
      raise TokenizerError(f"{config} is not valid JSON: {err}.") from err
    for key in SPECIAL_KEYS:
      value = values.get(key)
      if isinstance(value, dict):  # a serialized AddedToken
        value = value.get("content")
      if isinstance(value, str):
        found[key] = value
  return found


class JsonTokenizer:
  """A tokenizer.json, read by `tokenizers`. Picklable, like `Tokenizer`.

  Special-token strings inside a text are encoded as text, as SentencePiece
  does with its control pieces, so a document cannot forge a bos or eos.
  """

  def __init__(self, tokenizer_json: str, special: dict[str, str],
               path: str = "<memory>"):
    self.path = path
    self._json = tokenizer_json
    self._special = dict(special)
    try:
      self._tok = Tokenizer.from_str(tokenizer_json)
    except Exception as err:  # tokenizers raises a bare Exception
      raise TokenizerError(f"{path} is not a tokenizer.json the tokenizers "
                           f"library reads: {err}") from err
    self._tok.encode_special_tokens = True
    missing = [k for k in ("bos_token", "eos_token") if k not in special]
    if missing:
      where = os.path.join(os.path.dirname(path), "tokenizer_config.json")
      raise TokenizerError(
          f"No {' or '.join(missing)} is named for {path}: write {where} "
          f"with \"bos_token\" and \"eos_token\" (token strings of this "
          f"tokenizer), as Hugging Face folders do.")
    self._ids = {}
    for key, token in special.items():
      self._ids[key] = self._tok.token_to_id(token)
      if self._ids[key] is None:
        raise TokenizerError(f"{key}={token!r} (tokenizer_config.json beside "
                             f"{path}) is not a token of {path}.")

  @classmethod
  def from_file(cls, path: epath.PathLike) -> "JsonTokenizer":
    path = epath.Path(path)
    return cls(path.read_text(), special_tokens_beside(path), os.fspath(path))

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def bos_id(self) -> int:
    return self._ids["bos_token"]

  @property
  def eos_id(self) -> int:
    return self._ids["eos_token"]

  @property
  def pad_id(self) -> int:
    """-1 without a pad token, as SentencePiece reports it."""
    return self._ids.get("pad_token", -1)

  def special_pieces(self) -> dict[str, str]:
    return dict(self._special)

  def hf_files(self) -> dict[str, bytes]:
    """The tokenizer files of an export folder."""
    return {"tokenizer.json": self._json.encode("utf-8")}

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without bos/eos (the pipeline adds those)."""
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    # SentencePiece drops control pieces when decoding; so do we.
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def __getstate__(self):
    return {"path": self.path, "json": self._json, "special": self._special}

  def __setstate__(self, state):
    self.__init__(state["json"], state["special"], state["path"])

  def __repr__(self) -> str:
    return f"JsonTokenizer(path={self.path!r}, vocab_size={self.vocab_size})"
