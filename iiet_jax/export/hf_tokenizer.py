"""The tokenizer files of a Hugging Face folder, out (export) and in (import).

An export carries tokenizer.json (converted from the run's SentencePiece
model, or the run's own tokenizer.json) and, for SentencePiece runs,
tokenizer.model. tokenizer_config.json names `PreTrainedTokenizerFast`:
transformers 5 loads that class's tokenizer.json as written, where
`LlamaTokenizerFast` would rebuild the pipeline from the vocabulary with
Llama's defaults (a prefix space). No remote code is involved, for any
architecture. `split_special_tokens` keeps "<s>" written in a text as text,
as in training.

Import carries the folder's tokenizer.model, or else its tokenizer.json with
a tokenizer_config.json naming its special tokens, into the new workdir.
"""

from __future__ import annotations

import json
from pathlib import Path

from iiet_jax.data import fast_tokenizer
from iiet_jax.data import tokenizer as tok_lib
from iiet_jax.export.names import ExportError


def _json(path: Path, value) -> None:
  path.write_text(json.dumps(value, indent=2) + "\n")


def write(folder: Path, tokenizer, max_len: int) -> None:
  """The tokenizer files of an export folder for `tokenizer`."""
  for name, data in tokenizer.hf_files().items():
    (folder / name).write_bytes(data)
  special = tokenizer.special_pieces()
  _json(folder / "tokenizer_config.json", {
      "tokenizer_class": "PreTrainedTokenizerFast",
      "model_max_length": max_len, "clean_up_tokenization_spaces": False,
      "split_special_tokens": True, **special})
  _json(folder / "special_tokens_map.json", special)


def _special_from_config(src: Path, tokenizer_json: str) -> dict[str, str]:
  """Special tokens by the ids in config.json / generation_config.json,
  for folders whose tokenizer files do not name them."""
  from tokenizers import Tokenizer
  vocab = Tokenizer.from_str(tokenizer_json)
  found = {}
  for name in ("generation_config.json", "config.json"):  # later wins
    if not (src / name).is_file():
      continue
    config = json.loads((src / name).read_text())
    for key in fast_tokenizer.SPECIAL_KEYS:
      token_id = config.get(f"{key}_id")
      if isinstance(token_id, list):  # several eos ids: the first ends text
        token_id = token_id[0] if token_id else None
      if isinstance(token_id, int) and vocab.id_to_token(token_id):
        found[key] = vocab.id_to_token(token_id)
  return found


def carry(src: Path, stage: Path, final: Path) -> str | None:
  """Carries the tokenizer of the HF folder `src` into `stage` (to become
  `final`) as a run carries its own (data/tokenizer.py `carry`); returns its
  path there for config.data.tokenizer, or None."""
  try:
    if (src / "tokenizer.model").is_file():
      tokenizer = tok_lib.load_tokenizer(src / "tokenizer.model")
    elif (src / "tokenizer.json").is_file():
      text = (src / "tokenizer.json").read_text(encoding="utf-8")
      special = {**_special_from_config(src, text),
                 **fast_tokenizer.special_tokens_beside(
                     src / "tokenizer.json")}
      tokenizer = fast_tokenizer.JsonTokenizer(
          text, special, str(src / "tokenizer.json"))
    else:
      return None
  except tok_lib.TokenizerError as err:
    raise ExportError(f"--hf={src}: {err}") from err
  return str(final / tok_lib.carry(tokenizer, stage).name)
