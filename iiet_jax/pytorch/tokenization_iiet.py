"""The run's SentencePiece model as a Hugging Face tokenizer.

Text is encoded by SentencePiece itself, so ids equal those the JAX pipeline
trained on (identity normalisation, no dummy prefix, byte fallback); a
converted "fast" tokenizer would re-derive the merges and may split
differently. Special ids: 0 <pad>, 1 <s> (bos), 2 </s> (eos), 3 <unk>.
`add_bos_token` (default True) prepends <s> like the training pipeline;
special-token strings inside a text are encoded as text, as in training.
"""

import os
import shutil

import sentencepiece as spm
from transformers import PreTrainedTokenizer


class IIETTokenizer(PreTrainedTokenizer):
  vocab_files_names = {"vocab_file": "tokenizer.model"}
  model_input_names = ["input_ids", "attention_mask"]

  def __init__(self, vocab_file, add_bos_token=True, add_eos_token=False,
               **kwargs):
    self.vocab_file = vocab_file
    self.sp = spm.SentencePieceProcessor(model_file=vocab_file)
    self.add_bos_token = add_bos_token
    self.add_eos_token = add_eos_token
    piece = self.sp.id_to_piece
    kwargs.setdefault("bos_token", piece(self.sp.bos_id()))
    kwargs.setdefault("eos_token", piece(self.sp.eos_id()))
    kwargs.setdefault("unk_token", piece(self.sp.unk_id()))
    kwargs.setdefault("pad_token", piece(self.sp.pad_id()))
    # "<s>" written in a text is text to SentencePiece; keep it that way.
    kwargs.setdefault("split_special_tokens", True)
    super().__init__(**kwargs)

  @property
  def vocab_size(self):
    return self.sp.get_piece_size()

  def get_vocab(self):
    vocab = {self.sp.id_to_piece(i): i for i in range(self.vocab_size)}
    vocab.update(self.added_tokens_encoder)
    return vocab

  def _tokenize(self, text, **kwargs):
    return self.sp.encode(text, out_type=str)

  def _convert_token_to_id(self, token):
    return self.sp.piece_to_id(token)

  def _convert_id_to_token(self, index):
    return self.sp.id_to_piece(index)

  def convert_tokens_to_string(self, tokens):
    """Pieces to text; special tokens come out as their own strings
    (SentencePiece alone would drop them)."""
    special, out, run = set(self.all_special_tokens), [], []
    for token in tokens:
      if token in special:
        out += [self.sp.decode_pieces(run), token]
        run = []
      else:
        run.append(token)
    return "".join(out + [self.sp.decode_pieces(run)])

  def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
    bos = [self.bos_token_id] if self.add_bos_token else []
    eos = [self.eos_token_id] if self.add_eos_token else []
    out = bos + token_ids_0 + eos
    if token_ids_1 is not None:
      out += bos + token_ids_1 + eos
    return out

  def get_special_tokens_mask(self, token_ids_0, token_ids_1=None,
                              already_has_special_tokens=False):
    if already_has_special_tokens:
      return super().get_special_tokens_mask(token_ids_0, token_ids_1, True)
    bos = [1] if self.add_bos_token else []
    eos = [1] if self.add_eos_token else []
    out = bos + [0] * len(token_ids_0) + eos
    if token_ids_1 is not None:
      out += bos + [0] * len(token_ids_1) + eos
    return out

  def save_vocabulary(self, save_directory, filename_prefix=None):
    name = (filename_prefix + "-" if filename_prefix else "") + \
        "tokenizer.model"
    out = os.path.join(save_directory, name)
    if os.path.abspath(self.vocab_file) != os.path.abspath(out):
      shutil.copyfile(self.vocab_file, out)
    return (out,)
