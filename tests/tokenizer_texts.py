"""Texts shared by the tokenizer tests: a training sample of the standard
library, held-out modules and hand-made edge cases."""

from __future__ import annotations

import sysconfig
from pathlib import Path

VOCAB = 400
STDLIB = Path(sysconfig.get_paths()["stdlib"])
_TRAIN = ("textwrap.py", "string.py", "argparse.py")
# Real text the tokenizer never saw; html/entities.py and cp1252.py are full
# of characters outside a 400-piece vocabulary (byte fallback).
_HELD_OUT = ("json/decoder.py", "csv.py", "email/utils.py",
             "html/entities.py", "encodings/cp1252.py")
EDGES = [
    "", " ", "    leading spaces", "trailing spaces  \t ",
    "tabs\t\tand\tnewlines\n\n\n", "\n  runs \t \n   of    whitespace\r\n",
    "naïve café — 日本語 Ωμέγα", "outside the vocabulary: 🙂 𝔘𝔫𝔦 ☃ \x00 \x7f",
    "digits 1234567890 and 3.14159",
]
SPECIAL_TEXT = "<s> and </s> are text here, <pad> and <unk> too"


def sample_texts() -> list[str]:
  """Held-out real text, then the edge cases."""
  return [(STDLIB / n).read_text(encoding="utf-8") for n in _HELD_OUT] + EDGES


def corpus_texts() -> list[str]:
  """What the test tokenizers are trained on."""
  return [(STDLIB / n).read_text(encoding="utf-8") for n in _TRAIN]
