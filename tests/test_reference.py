"""The Flax models compute SPEC.md sections 1-4, checked against tests/reference.py."""

from __future__ import annotations

import numpy as np
import pytest

import reference
from conftest import apply, init_params, rel_err, random_tokens, small_config

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
