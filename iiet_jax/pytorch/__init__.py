"""PyTorch / Hugging Face side of an export: config, model and tokenizer.

These files import only torch, transformers and sentencepiece (never JAX),
use relative imports among themselves, and are copied verbatim into every
exported folder, where `auto_map` in config.json / tokenizer_config.json
points `AutoModelForCausalLM` and `AutoTokenizer` at them
(`trust_remote_code=True`). `iiet_jax/export/` writes the folders.
"""

# Files of this package that an export folder carries.
SHIPPED_FILES = ("configuration_iiet.py", "modeling_iiet.py",
                 "tokenization_iiet.py")
