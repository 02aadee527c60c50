"""Data: local corpora as TFDS ArrayRecord datasets, and the tokenizer.

`documents` finds and reads corpus files, `corpus` holds the TFDS builders
and random-access reading, `tokenizer` the SentencePiece model
(`fast_tokenizer`: tokenizer.json, converted or read). Importing
`corpus` registers the `text_corpus` and `python_stdlib` builders with TFDS.
"""
