"""bench/train_throughput.py's PyTorch twins and rows.

The twin (bench/torch_twin.py) is built from the JAX parameters through the
export names, so it must start at the JAX model's loss, hold as many
parameters, and train: one AdamW step lowers the loss on its batch. The
bench runs the twins in a worker process, which must time their steps and
hand its failures back as errors, not hang.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from support import apply, init_params, random_tokens, small_config
from iiet_jax.train import flops
from iiet_jax.train.loss import next_token_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import torch_twin  # noqa: E402
import train_throughput  # noqa: E402

OPT = types.SimpleNamespace(peak_lr=1e-2, b1=0.9, b2=0.95, eps=1e-8,
                            weight_decay=0.1, clip_norm=1.0)
CASES = {
    "transformer": dict(arch="transformer"),
    "iiet r=2": dict(arch="iiet", iterations=2),
    "e-iiet 3,0,1 unrolled": dict(arch="iiet", iterations=(3, 0, 1),
                                  scan_layers=False),
    "pcformer": dict(arch="pcformer", tie_embeddings=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_twin_starts_at_the_jax_loss_and_trains(case):
  cfg = small_config(**CASES[case])
  tokens = random_tokens(cfg, 2, 24, seed=1)
  params = init_params(cfg, tokens[:, :8])  # perturbed: not torch's own init
  jax_loss, _ = next_token_loss(apply(cfg, params, tokens), tokens)
  run = torch_twin.TorchRun.from_jax(cfg, params, np.asarray(tokens), OPT)
  assert run.param_count == sum(x.size for x in jax.tree.leaves(params))
  with torch.no_grad():
    start = run.loss().item()
  assert abs(start - float(jax_loss)) < 1e-5, (start, float(jax_loss))
  assert run.step() == pytest.approx(start, abs=1e-6)
  with torch.no_grad():
    assert run.loss().item() < start - 1e-3


def test_worker_times_twins_in_its_own_process_and_reports_its_errors():
  cfg = small_config(arch="iiet", iterations=2)
  tokens = random_tokens(cfg, 2, 16, seed=1)
  params = init_params(cfg, tokens[:, :8])
  spec = torch_twin.spec_of(cfg, params, tokens, OPT)
  broken = dict(spec, tensors={k: v for k, v in spec["tensors"].items()
                               if k != "model.norm.weight"})
  with torch_twin.Worker(threads=1) as worker:
    assert worker.process.pid != os.getpid()
    count = worker.build("torch_iiet", spec)
    assert count == sum(x.size for x in jax.tree.leaves(params))
    times = worker.steps("torch_iiet", 3)
    assert len(times) == 3 and all(t > 0 for t in times)
    with pytest.raises(torch_twin.WorkerError,
                       match=r"(?s)failed build 'broken'.*ValueError: "
                             r"PyTorch twin of iiet: missing "
                             r"\['model.norm.weight'"):
      worker.build("broken", broken)
    with pytest.raises(torch_twin.WorkerError, match="no twin 'nope'"):
      worker.steps("nope", 1)
    assert len(worker.steps("torch_iiet", 1)) == 1  # still serving
  assert worker.process.returncode == 0


def test_a_dead_worker_is_an_error_not_a_hang():
  with torch_twin.Worker(threads=1) as worker:
    worker.process.kill()
    with pytest.raises(torch_twin.WorkerError, match="died .*during steps"):
      worker.steps("torch_transformer", 1)


def test_rows_are_the_documented_models():
  args = types.SimpleNamespace(remat="none", batch=2, seq_len=16)
  for size in ("tiny", "55m", "340m"):
    cfg = lambda row: train_throughput.row_config(row, size, args).model
    iiet, eiiet = cfg("iiet"), cfg("eiiet")
    assert len(eiiet.iterations) == eiiet.num_layers == iiet.num_layers
    assert eiiet.scan_layers and not cfg("eiiet_unrolled").scan_layers
    assert cfg("transformer_nfe").num_layers == iiet.num_layers * 4
    assert cfg("pcformer_nfe").num_layers == iiet.num_layers * 3
    assert cfg("torch_iiet") == iiet
    if size == "tiny":
      assert tuple(eiiet.iterations) == (3, 1, 1, 1)
    from iiet_jax.models import ModelConfig
    per_token = lambda m: flops.train_flops_per_token(
        ModelConfig.from_dict(m), 16)
    assert (per_token(cfg("transformer")) < per_token(eiiet)
            < per_token(iiet))
