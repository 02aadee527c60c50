"""PyTorch / Hugging Face side of an export: the IIET / PCformer config and
model.

These files import only torch and transformers (never JAX), use relative
imports among themselves, and are copied verbatim into every IIET / PCformer
export, where `auto_map` in config.json points `AutoModelForCausalLM` at
them (`trust_remote_code=True`). The tokenizer needs no code of ours: every
export carries a tokenizer.json that transformers reads itself.
`iiet_jax/export/` writes the folders.
"""

# Files of this package that an IIET / PCformer export folder carries.
SHIPPED_FILES = ("configuration_iiet.py", "modeling_iiet.py")
