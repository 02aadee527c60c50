"""Analytic FLOPs against XLA's count of the compiled forward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from support import small_config
from iiet_jax.models import build_model
from iiet_jax.train import flops


@pytest.mark.parametrize("arch,extra", [("transformer", {}),
                                        ("iiet", dict(iterations=(3, 0, 2))),
                                        ("pcformer", dict(pc_order=4)),
                                        # one kv head: k, v 4x cheaper
                                        ("transformer",
                                         dict(num_kv_heads=1))])
def test_forward_flops_match_xla(arch, extra):
  """XLA counts a loop body once, whatever its trip count, so layers are
  unrolled here (iterations are unrolled by default)."""
  cfg = small_config(arch=arch, scan_layers=False, d_model=64, d_ff=128,
                     vocab_size=256, **extra)
  B, T = 2, 32
  model = build_model(cfg)
  tokens = jax.ShapeDtypeStruct((B, T), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), tokens)
  compiled = jax.jit(model.apply).lower(params, tokens).compile()
  measured = compiled.cost_analysis()["flops"] / (B * T)
  predicted = flops.forward_flops_per_token(cfg, T)
  # XLA also counts norms, softmax and elementwise ops that the analytic
  # count leaves out; the matmul terms dominate.
  assert 0.9 * measured <= predicted <= 1.02 * measured, (measured, predicted)


def test_iiet_costs_scale_with_block_evaluations():
  base = small_config(arch="transformer", num_layers=24, d_model=1024,
                      num_heads=8, d_ff=2816, vocab_size=32000)
  iiet = small_config(arch="iiet", num_layers=24, d_model=1024, num_heads=8,
                      d_ff=2816, vocab_size=32000, iterations=3)
  head = 2.0 * 1024 * 32000
  ratio = ((flops.forward_flops_per_token(iiet, 2048) - head) /
           (flops.forward_flops_per_token(base, 2048) - head))
  assert 4.0 < ratio < 4.01  # 4 blocks per layer plus small history mixes


def test_chip_table_and_mfu():
  assert flops.chip("TPU v5 lite")[0] == 197.0
  assert flops.chip("TPU v5")[1] == 95.74
  assert flops.chip("cpu") == (None, None)
  cfg = small_config()
  assert flops.mfu(cfg, 16, 1e6, "cpu") is None
  per_token = flops.train_flops_per_token(cfg, 16)
  assert flops.mfu(cfg, 16, 275e12 / per_token, "TPU v4") == pytest.approx(1.0)


@pytest.mark.parametrize("device_kind,peak,hbm", [
    ("TPU v6 lite", 918.0, 31.25),   # v6e, as jax.devices() names it
    ("NVIDIA H200", 989.0, 140.40),
    ("NVIDIA B200", 2250.0, 179.06),
    ("NVIDIA H100 80GB HBM3", 989.0, 80.0),
    ("NVIDIA GH200 480GB", None, None),  # not an H200: 96 GB of HBM
])
def test_chip_table_knows_devices_by_their_device_kind(device_kind, peak,
                                                       hbm):
  assert flops.chip(device_kind) == (peak, hbm)
  if peak is not None:
    per_token = flops.train_flops_per_token(small_config(), 16)
    assert flops.mfu(small_config(), 16, 0.5 * peak * 1e12 / per_token,
                     device_kind) == pytest.approx(0.5)
