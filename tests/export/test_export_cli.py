"""`iiet export / score / import` on a trained run, and lm-evaluation-harness
on the export, offline, against our own JAX log-likelihoods."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TASK_DIR = ROOT / "tests" / "lm_eval_task"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
ENV = {**os.environ, **OFFLINE,
       "XLA_FLAGS": "--xla_backend_optimization_level=0"}
MAIN = [sys.executable, "-m", "iiet_jax.main"]


def _run(args, cwd=ROOT, timeout=300):
  return subprocess.run(args, cwd=cwd, env=ENV, capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A tiny IIET trained 4 steps on a stdlib slice: checkpoints 2 and 4.
  The prepared corpus and its tokenizer cache are deleted after training:
  every command below reads the run alone (its tokenizer travels in the
  workdir)."""
  root = tmp_path_factory.mktemp("export_run")
  out = _run(MAIN + [
      "--config=configs/lm.py:model=iiet,size=tiny", f"--workdir={root}/run",
      "--config.model.iterations=2", "--config.switch_at=0",
      "--config.total_steps=4", "--config.optimizer.warmup_steps=1",
      "--config.eval_every=4", "--config.checkpoint.every=2",
      f"--config.data.data_dir={root}", "--config.data.max_files=60",
      "--config.data.validation_fraction=0.2",
      "--config.data.tokenizer_sample_chars=300000"])
  assert out.returncode == 0, out.stderr[-3000:]
  corpus = [p for p in root.iterdir() if p.name != "run"]
  assert corpus, "the corpus should have been prepared under data_dir"
  for path in corpus:
    shutil.rmtree(path) if path.is_dir() else path.unlink()
  assert (root / "run" / "tokenizer.model").is_file()
  return root


def _export(run_dir, out, *extra):
  return _run(MAIN + ["export", f"--workdir={run_dir}/run", f"--out={out}",
                      *extra])


def test_export_folder_loads_and_scores_like_jax(run_dir, tmp_path):
  from transformers import AutoModelForCausalLM, AutoTokenizer
  import sentencepiece as spm
  out = tmp_path / "hf"
  res = _export(run_dir, out, "--step=2")
  assert res.returncode == 0, res.stderr[-3000:]
  assert sorted(p.name for p in out.iterdir()) == sorted([
      "config.json", "generation_config.json", "model.safetensors",
      "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
      "special_tokens_map.json", "configuration_iiet.py", "modeling_iiet.py",
      "iiet_export.json"])
  assert json.loads((out / "iiet_export.json").read_text())["step"] == 2
  assert json.loads((out / "config.json").read_text())["iterations"] == \
      [2, 2, 2, 2]

  # The tokenizer is no remote code, even in an IIET folder.
  tok = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
  sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
  for text in ("def f(x):\n\treturn x  # ünï 😀\n", "<s> is text", "  a"):
    assert tok(text)["input_ids"] == [1] + sp.encode(text)
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) \
        == text

  ids = np.random.default_rng(0).integers(3, 2048, (2, 40))
  np.save(tmp_path / "ids.npy", ids)
  res = _run(MAIN + ["score", f"--workdir={run_dir}/run", "--step=2",
                     f"--input={tmp_path}/ids.npy",
                     f"--out={tmp_path}/scores.npz"])
  assert res.returncode == 0, res.stderr[-3000:]
  assert "perplexity" in res.stdout
  scores = np.load(tmp_path / "scores.npz")
  np.testing.assert_array_equal(scores["token_ids"], ids)
  model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
  with torch.no_grad():
    logits = model(torch.as_tensor(ids)).logits.double()
  theirs = torch.log_softmax(logits, -1)[:, :-1].gather(
      -1, torch.as_tensor(ids[:, 1:])[..., None])[..., 0].numpy()
  assert np.abs(scores["logprobs"] - theirs).max() < 1e-4


def test_export_refusals_leave_nothing_behind(run_dir, tmp_path):
  res = _export(run_dir, tmp_path / "x", "--step=3")
  assert res.returncode != 0
  assert "no checkpoint of step 3; it has steps 2, 4" in res.stderr
  assert not (tmp_path / "x").exists()

  busy = tmp_path / "busy"
  busy.mkdir()
  (busy / "keep.txt").write_text("mine")
  res = _export(run_dir, busy)
  assert res.returncode != 0 and "not empty; pass --overwrite" in res.stderr
  assert [p.name for p in busy.iterdir()] == ["keep.txt"]
  res = _export(run_dir, busy, "--overwrite", "--dtype=bfloat16")
  assert res.returncode == 0, res.stderr[-3000:]
  assert not (busy / "keep.txt").exists()
  assert json.loads((busy / "config.json").read_text())["dtype"] == \
      "bfloat16"
  assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_a_run_saved_without_its_tokenizer_names_the_fix(run_dir, tmp_path):
  """Runs saved before runs carried their tokenizer: one line, two fixes."""
  old = tmp_path / "old"
  shutil.copytree(run_dir / "run", old)
  (old / "tokenizer.model").unlink()
  res = _run(MAIN + ["export", f"--workdir={old}", f"--out={tmp_path}/hf"])
  assert res.returncode == 2   # errors.Exit.BAD_INPUT
  assert res.stderr.strip().splitlines() == [
      f"Run error: The run in {old} was saved before runs carried their "
      f"tokenizer. Run its `iiet train` command once more (a finished run "
      f"then only writes its tokenizer into the workdir), or copy the "
      f"tokenizer .model it trained with to {old}/tokenizer.model."]
  assert not (tmp_path / "hf").exists()


def test_failed_export_writes_nothing(run_dir, tmp_path, monkeypatch):
  from iiet_jax.export import hf_folder, tensor_file

  def broken(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(tensor_file, "save", broken)
  with pytest.raises(OSError, match="disk full"):
    hf_folder.export(f"{run_dir}/run", str(tmp_path / "out"))
  assert list(tmp_path.iterdir()) == []


def test_import_of_an_export_is_the_identity(run_dir, tmp_path):
  first = tmp_path / "first"
  assert _export(run_dir, first).returncode == 0
  res = _run(MAIN + ["import", f"--hf={first}", f"--workdir={tmp_path}/new"])
  assert res.returncode == 0, res.stderr[-3000:]
  assert "--config.init_from=" in res.stdout
  res = _run(MAIN + ["export", f"--workdir={tmp_path}/new",
                     f"--out={tmp_path}/second"])
  assert res.returncode == 0, res.stderr[-3000:]
  assert (first / "model.safetensors").read_bytes() == \
      (tmp_path / "second" / "model.safetensors").read_bytes()
  for name in ("tokenizer.model", "tokenizer.json"):
    assert (first / name).read_bytes() == \
        (tmp_path / "second" / name).read_bytes()
  res = _run(MAIN + ["import", f"--hf={first}", f"--workdir={tmp_path}/new"])
  assert res.returncode != 0 and "not empty" in res.stderr
  res = _run(MAIN + ["import", f"--hf={tmp_path}", f"--workdir={tmp_path}/z"])
  assert res.returncode != 0 and "has no config.json" in res.stderr


def test_lm_eval_harness_matches_our_loglikelihoods(run_dir, tmp_path):
  out = tmp_path / "hf"
  assert _export(run_dir, out).returncode == 0
  # Greedy decoding: PyTorch recomputing every step == our KV-cached decoder.
  from transformers import AutoModelForCausalLM, AutoTokenizer
  model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
  tok = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
  ids = model.generate(**tok("def main(", return_tensors="pt"),
                       max_new_tokens=12, do_sample=False)
  res = _run(MAIN + ["generate", f"--workdir={run_dir}/run",
                     "--prompt=def main(", "--max_new_tokens=12"])
  assert res.returncode == 0, res.stderr[-3000:]
  assert res.stdout.rstrip("\n") == tok.decode(
      ids[0], skip_special_tokens=True).rstrip("\n")
  res = _run([sys.executable, "-m", "lm_eval", "--model", "hf",
              "--model_args", f"pretrained={out},trust_remote_code=True,"
              "dtype=float32", "--tasks", "iiet_python_choice",
              "--include_path", ".", "--device", "cpu", "--batch_size", "4",
              "--output_path", str(tmp_path / "lm_eval"), "--log_samples"],
             cwd=TASK_DIR, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  acc = re.search(r"iiet_python_choice\|.*\|acc\s*\|\S*\s*\|\s*([\d.]+)",
                  res.stdout)
  assert acc, res.stdout[-2000:]
  samples = next((tmp_path / "lm_eval").rglob("samples_*.jsonl"))
  res = _run(MAIN + ["score", f"--workdir={run_dir}/run",
                     f"--input={samples}"])
  assert res.returncode == 0, res.stderr[-3000:]
  line = re.search(r"24 requests of 8 documents .*: accuracy ([\d.]+) by "
                   r"our log-likelihoods; max \|ours - lm-eval\| (\S+)",
                   res.stdout)
  assert line, res.stdout
  assert float(line.group(1)) == pytest.approx(float(acc.group(1)))
  assert float(line.group(2)) < 1e-4


def test_import_of_a_stock_llama_checkpoint(tmp_path):
  """A user's PyTorch Llama (save_pretrained) becomes a checkpoint of ours
  that scores every token like the PyTorch model does."""
  from transformers import LlamaConfig, LlamaForCausalLM
  torch.manual_seed(0)
  model = LlamaForCausalLM(LlamaConfig(
      vocab_size=97, hidden_size=32, intermediate_size=48,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
      max_position_embeddings=128, tie_word_embeddings=False,
      rope_parameters={"rope_type": "default", "rope_theta": 500.0}))
  model.save_pretrained(tmp_path / "llama")
  res = _run(MAIN + ["import", f"--hf={tmp_path}/llama",
                     f"--workdir={tmp_path}/ours"])
  assert res.returncode == 0, res.stderr[-3000:]
  assert "has no tokenizer.model or tokenizer.json" in res.stdout
  ids = np.random.default_rng(1).integers(0, 97, (2, 100))
  np.save(tmp_path / "ids.npy", ids)
  res = _run(MAIN + ["score", f"--workdir={tmp_path}/ours",
                     f"--input={tmp_path}/ids.npy",
                     f"--out={tmp_path}/scores.npz"])
  assert res.returncode == 0, res.stderr[-3000:]
  with torch.no_grad():
    logits = model(torch.as_tensor(ids)).logits.double()
  theirs = torch.log_softmax(logits, -1)[:, :-1].gather(
      -1, torch.as_tensor(ids[:, 1:])[..., None])[..., 0].numpy()
  assert np.abs(np.load(tmp_path / "scores.npz")["logprobs"] - theirs
                ).max() < 1e-4


def _one_error_line(res, starts: str) -> str:
  assert res.returncode == 2, res.stderr[-3000:]   # errors.Exit.BAD_INPUT
  assert "Traceback" not in res.stderr
  errors = [line for line in res.stderr.splitlines() if " error: " in line]
  assert len(errors) == 1 and errors[0].startswith(starts), res.stderr[-3000:]
  return errors[0]


def test_reading_a_run_never_writes_into_it(run_dir, tmp_path):
  # A run whose log file cannot be opened, as in a read-only folder (root
  # ignores permission bits; a folder in the log file's place binds root).
  run = tmp_path / "run"
  shutil.copytree(run_dir / "run", run)
  (run / "iiet.log").unlink(missing_ok=True)
  (run / "iiet.log").mkdir()
  before = sorted(str(p) for p in run.rglob("*"))
  text = tmp_path / "text.txt"
  text.write_text("def f(x):\n    return x + 1\n" * 20)
  res = _run(MAIN + ["export", f"--workdir={run}", f"--out={tmp_path}/hf"])
  assert res.returncode == 0, res.stderr[-3000:]
  res = _run(MAIN + ["score", f"--workdir={run}", f"--input={text}"])
  assert res.returncode == 0, res.stderr[-3000:]
  assert sorted(str(p) for p in run.rglob("*")) == before


@pytest.mark.slow
def test_bad_inputs_on_a_trained_run_fail_cleanly(run_dir, tmp_path):
  run = f"--workdir={run_dir}/run"
  bad = tmp_path / "samples_x.jsonl"
  bad.write_text('{"doc_id": 0, "arguments": {}}\n{not json\n')
  line = _one_error_line(_run(MAIN + ["score", run, f"--input={bad}"]),
                         "Score error:")
  assert f"{bad} line 2 is not JSON" in line
  text = tmp_path / "text.txt"
  text.write_text("x = 1\n" * 50)
  line = _one_error_line(_run(MAIN + ["score", run, f"--input={text}",
                                      "--out=/proc/iiet/nll.npy"]),
                         "File error:")
  assert "/proc/iiet" in line
  # A stale staging folder of a killed export goes; a live one stays.
  host = socket.gethostname()
  dead = tmp_path / f".hf.partial-{host}-999999999"
  live = tmp_path / f".hf.partial-{host}-{os.getpid()}"   # this process
  elsewhere = tmp_path / ".hf.partial-another-host-999999999"
  for folder in (dead, live, elsewhere):
    folder.mkdir()
  res = _export(run_dir, tmp_path / "hf")
  assert res.returncode == 0, res.stderr[-3000:]
  assert not dead.exists() and live.exists() and elsewhere.exists()
  live.rmdir()
  elsewhere.rmdir()
  # Non-finite weights are refused at import, by tensor name.
  from safetensors.numpy import load_file, save_file
  tensors = load_file(tmp_path / "hf" / "model.safetensors")
  name = sorted(tensors)[3]
  tensors[name][0] = np.nan
  save_file(tensors, tmp_path / "hf" / "model.safetensors")
  line = _one_error_line(_run(MAIN + ["import", f"--hf={tmp_path}/hf",
                                      f"--workdir={tmp_path}/imported"]),
                         "Export error:")
  assert f"tensor {name} holds 1 non-finite" in line
  assert not (tmp_path / "imported").exists()
  # A student that does not read the teacher's token ids.
  line = _one_error_line(_run(MAIN + [
      "distill", "--config=configs/lm.py:model=iiet,size=tiny",
      f"--workdir={tmp_path}/student", f"--config.distill.teacher="
      f"{run_dir}/run", "--config.model.vocab_size=1024"]), "Distill error:")
  assert "model.vocab_size=1024, but the teacher" in line
  assert not (tmp_path / "student").exists()


@pytest.mark.slow
def test_export_onto_a_full_disk_is_one_line(run_dir, tmp_path):
  import resource

  def small_files():   # writes past 64 kB fail with EFBIG, as a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
  res = subprocess.run(MAIN + ["export", f"--workdir={run_dir}/run",
                               f"--out={tmp_path}/hf"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300,
                       preexec_fn=small_files)
  line = _one_error_line(res, "Export error:")
  assert f"Writing {tmp_path}/hf failed" in line and "ulimit -f" in line
  assert list(tmp_path.iterdir()) == []


def test_a_student_with_another_tokenizer_is_refused(run_dir, tmp_path):
  from iiet_jax import overrides
  from iiet_jax.data import tokenizer as tok_lib
  from iiet_jax.stages import distill
  other = tok_lib.train_tokenizer(
      (f"line {i} of another corpus, word{i % 37}" for i in range(3000)),
      300, tmp_path / "other.model")
  config = overrides.load("configs/lm.py:model=iiet,size=tiny", {
      "stage": "distill", "distill.teacher": f"{run_dir}/run",
      "data.tokenizer": other.path})
  with pytest.raises(distill.DistillError, match="is not the teacher's"):
    distill.check_student(config)
  config = overrides.load("configs/lm.py:model=iiet,size=tiny", {
      "stage": "distill", "distill.teacher": f"{run_dir}/run",
      "data.tokenizer": f"{run_dir}/run/tokenizer.model"})
  distill.check_student(config)   # the teacher's own: accepted
