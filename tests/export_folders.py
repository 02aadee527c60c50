"""Export folders for the tests: what `iiet export` writes for a model, and
its logits in transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import torch

from iiet_jax import pytorch
from iiet_jax.export import names, tensor_file

T = 512  # tokens per compared input: long enough for a RoPE mistake to show
PYTORCH_DIR = Path(pytorch.__file__).parent


def write_folder(folder: Path, cfg, params) -> None:
  """What `iiet export` writes, minus the tokenizer."""
  folder.mkdir(parents=True, exist_ok=True)
  tensor_file.save(folder, names.to_hf(jax.device_get(params), cfg),
                   np.float32)
  (folder / "config.json").write_text(json.dumps(names.hf_config(cfg)))
  for name in pytorch.SHIPPED_FILES:
    shutil.copyfile(PYTORCH_DIR / name, folder / name)


def torch_logits(folder: Path, tokens, remote: bool = True) -> np.ndarray:
  from transformers import AutoModelForCausalLM
  model = AutoModelForCausalLM.from_pretrained(
      folder, trust_remote_code=remote, dtype=torch.float32)
  with torch.no_grad():
    return model(torch.as_tensor(np.array(tokens), dtype=torch.long)
                 ).logits.double().numpy()
