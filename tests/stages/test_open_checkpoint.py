"""IIET from an open checkpoint, end to end: a stock transformers Llama with
grouped-query attention, random weights and a sharded bf16 save is imported,
trained 20 steps as IIET (the paper's second stage alone,
`configs/lm.py:model=iiet,init=DIR`), exported, and the export's log-probs in
transformers equal `iiet score` of the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from iiet_jax.data import tokenizer as tok_lib
from tokenizer_texts import VOCAB, corpus_texts

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "XLA_FLAGS": "--xla_backend_optimization_level=0"}
MAIN = [sys.executable, "-m", "iiet_jax.main"]


def _run(*args):
  out = subprocess.run(MAIN + list(args), cwd=ROOT, env=ENV, text=True,
                       capture_output=True, timeout=600)
  assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
  return out.stdout + out.stderr


def _llama_folder(folder: Path) -> Path:
  """What a user downloads: sharded bf16 safetensors, GQA, a tokenizer."""
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(
      vocab_size=VOCAB, hidden_size=64, intermediate_size=176,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
      pad_token_id=0)
  model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
  model.save_pretrained(folder, max_shard_size="100KB")
  tok_lib.train_tokenizer(corpus_texts(), VOCAB, folder / "tokenizer.model")
  assert (folder / "model.safetensors.index.json").is_file()
  return folder


@pytest.mark.slow  # about 50 s: five commands
def test_iiet_from_an_imported_llama(tmp_path):
  hf = _llama_folder(tmp_path / "llama")
  imported, run, out = tmp_path / "imported", tmp_path / "run", tmp_path / "hf"
  _run("import", f"--hf={hf}", f"--workdir={imported}")
  log = _run(
      f"--config=configs/lm.py:model=iiet,size=tiny,init={imported}",
      f"--workdir={run}", "--config.model.iterations=2",
      "--config.total_steps=20", "--config.optimizer.warmup_steps=2",
      "--config.eval_every=20", "--config.checkpoint.every=20",
      f"--config.data.data_dir={tmp_path}/data", "--config.data.max_files=40",
      "--config.data.validation_fraction=0.2")
  # The switch carried every Transformer++ tensor into the IIET at step 0.
  assert "switched to iiet at step 0" in log, log[-3000:]
  metrics = [json.loads(line) for line in
             (run / "metrics.jsonl").read_text().splitlines()]
  assert max(m.get("step", 0) for m in metrics) == 20

  _run("export", f"--workdir={run}", f"--out={out}")
  config = json.loads((out / "config.json").read_text())
  assert config["num_key_value_heads"] == 2 and config["iiet_arch"] == "iiet"

  ids = np.random.default_rng(0).integers(3, VOCAB, (2, 48))
  np.save(tmp_path / "ids.npy", ids)
  _run("score", f"--workdir={run}", f"--input={tmp_path}/ids.npy",
       f"--out={tmp_path}/scores.npz")
  ours = np.load(tmp_path / "scores.npz")["logprobs"]

  model = transformers.AutoModelForCausalLM.from_pretrained(
      out, trust_remote_code=True, dtype=torch.float32)
  with torch.no_grad():
    logits = model(torch.as_tensor(ids)).logits
  theirs = torch.log_softmax(logits, -1)[:, :-1].gather(
      -1, torch.as_tensor(ids)[:, 1:, None])[..., 0].numpy()
  assert ours.shape == theirs.shape
  assert np.abs(ours - theirs).max() < 1e-4

  # The imported Transformer++ itself: its import equals transformers too,
  # so the chain is checked at both ends.
  llama = transformers.AutoModelForCausalLM.from_pretrained(
      hf, dtype=torch.float32)
  _run("score", f"--workdir={imported}", f"--input={tmp_path}/ids.npy",
       f"--out={tmp_path}/imported.npz")
  with torch.no_grad():
    ref = torch.log_softmax(llama(torch.as_tensor(ids)).logits, -1)
  ref = ref[:, :-1].gather(-1, torch.as_tensor(ids)[:, 1:, None])[..., 0]
  got = np.load(tmp_path / "imported.npz")["logprobs"]
  assert np.abs(got - ref.numpy()).max() < 1e-4
