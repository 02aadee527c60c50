"""The Flax models compute SPEC.md sections 1-4, checked against tests/reference.py."""

from __future__ import annotations

import numpy as np
import pytest

import reference
from support import (apply, init_params, rel_err, random_tokens,
                      small_config, with_)

LLAMA3 = dict(rope_type="llama3", rope_factor=8.0, rope_low_freq_factor=1.0,
              rope_high_freq_factor=4.0, rope_original_max_positions=64)

CASES = [
    # (arch, overrides, batch, length)
    ("transformer", dict(), 2, 16),
    ("transformer", dict(num_layers=2, d_model=48, num_heads=6, d_ff=64,
                         tie_embeddings=False), 1, 33),
    ("iiet", dict(iterations=3), 2, 16),
    ("iiet", dict(iterations=0), 2, 12),
    ("iiet", dict(iterations=(2, 0, 1)), 2, 16),
    ("iiet", dict(iterations=(0, 3, 1), scan_layers=False), 1, 24),
    ("iiet", dict(iterations=(2, 3, 1), unroll_iterations=False), 2, 16),
    ("iiet", dict(num_layers=4, d_model=64, num_heads=2, d_ff=80,
                  iterations=(1, 2, 0, 2), tie_embeddings=False), 2, 40),
    ("pcformer", dict(), 2, 16),
    ("pcformer", dict(pc_order=4), 2, 16),
    ("pcformer", dict(pc_order=4, scan_layers=False, num_layers=2), 1, 20),
    # Grouped-query attention: 4 query heads over 2 kv heads, and over 1.
    ("transformer", dict(num_kv_heads=2), 2, 16),
    ("transformer", dict(num_kv_heads=1, tie_embeddings=False), 1, 20),
    ("iiet", dict(num_kv_heads=2, iterations=(2, 0, 1)), 2, 16),
    ("iiet", dict(num_kv_heads=1, scan_layers=False), 1, 12),
    ("pcformer", dict(num_kv_heads=2), 2, 16),
    ("pcformer", dict(num_kv_heads=1, pc_order=4, num_layers=2), 1, 16),
    # llama3 RoPE: head size 8 has wavelengths 6.3, 63, 628, 6283; with an
    # original context of 64 and factors 1 / 4 the pairs are kept, blended,
    # slowed, slowed.
    ("transformer", dict(num_kv_heads=2, **LLAMA3), 2, 40),
    ("iiet", dict(iterations=(1, 2, 0), **LLAMA3), 1, 40),
]


@pytest.mark.parametrize("arch,overrides,batch,length", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_flax_equals_reference(arch, overrides, batch, length):
  cfg = small_config(arch=arch, **overrides)
  tokens = random_tokens(cfg, batch, length, seed=len(CASES))
  params = init_params(cfg, tokens)
  got = apply(cfg, params, tokens)
  want = reference.forward(cfg, tokens, reference.from_flax(params, cfg))
  assert got.shape == (batch, length, cfg.vocab_size)
  assert rel_err(got, want) <= 1e-5


def test_llama3_rope_theta_has_every_branch_and_changes_logits():
  cfg = small_config(arch="transformer", **LLAMA3)
  plain = with_(cfg, rope_type="default")
  theta, base = reference.rope_theta(cfg), reference.rope_theta(plain)
  assert theta[0] == base[0]                       # short wavelength: kept
  assert base[1] / 8 < theta[1] < base[1]          # between: blended
  np.testing.assert_allclose(theta[2:], base[2:] / 8)  # long: slowed
  tokens = random_tokens(cfg, 1, 40, seed=1)
  params = init_params(cfg, tokens)
  assert rel_err(apply(cfg, params, tokens), apply(plain, params, tokens)) \
      > 1e-3


@pytest.mark.parametrize("arch", ["transformer", "iiet", "pcformer"])
def test_packed_segments_equal_reference(arch):
  """Packed documents: attention stays within a segment, RoPE restarts."""
  cfg = small_config(arch=arch, iterations=(1, 2, 0))
  tokens = random_tokens(cfg, 2, 20, seed=3)
  segment_ids = np.array([[1] * 7 + [2] * 9 + [3] * 4, [1] * 20], np.int32)
  positions = np.concatenate(
      [np.arange(7), np.arange(9), np.arange(4), np.arange(20)]).reshape(2, 20)
  params = init_params(cfg, tokens)
  got = apply(cfg, params, tokens, positions_BT=positions,
              segment_ids_BT=segment_ids)
  P = reference.from_flax(params, cfg)
  want = reference.forward(cfg, tokens, P, positions=positions,
                           segment_ids=segment_ids)
  assert rel_err(got, want) <= 1e-5
  # Every architecture is position-wise outside attention, so the second
  # document run alone, unpacked, gives the same logits.
  alone = apply(cfg, params, tokens[:1, 7:16])
  assert rel_err(got[:1, 7:16], alone) <= 1e-5
