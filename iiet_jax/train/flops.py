"""Analytic FLOPs per token, per-chip peaks, and MFU.

Counts multiply-adds as 2 FLOPs, from SPEC.md sections 1-4:
  block B_t      2 * (2 d^2 + 2 d K h + 3 d F)  q, o, k, v projections
                                       (K kv heads of size h) + SwiGLU
                 + 4 T d               scores and values (full-matrix count,
                                       the PaLM convention; causal masking
                                       would halve it)
  Transformer++  L blocks + head 2 d V
  IIET           sum_t (1 + r_t) blocks + every history mix: each of the r_t
                 iterations and the output mix of layer t sums t + 1 states
                 (2 (t + 1) d)
  PCformer       (order + 1) blocks per layer, the RK combination
                 (2 order d), the corrector and output mixes (2 * 2 (t + 1) d)
Block evaluations and the terms beyond the blocks are each architecture's
(`block_evaluations`, `extra_flops` in models/registry.py).
Training is counted as 3x the forward pass (forward + backward), without
rematerialisation, as MFU is conventionally defined.
"""

from __future__ import annotations

from iiet_jax.models import registry
from iiet_jax.models.config import ModelConfig

# Dense bf16 peak TFLOP/s per chip, and the HBM XLA can allocate per device
# (GiB; for GPUs the card's total as nvidia-smi reports it), keyed by a
# substring of `device.device_kind`. Most specific first. GPU kinds are the
# CUDA device names: "NVIDIA H200" and "NVIDIA B200" do not match the Grace
# superchips ("NVIDIA GH200 480GB", "NVIDIA GB200"), which differ in HBM.
CHIPS = (
    ("TPU v5 lite", 197.0, 15.75),   # v5e
    ("TPU v6 lite", 918.0, 31.25),   # v6e (Trillium)
    ("TPU v5", 459.0, 95.74),        # v5p
    ("TPU v4", 275.0, 30.75),        # v4 (megacore chip)
    ("NVIDIA B200", 2250.0, 179.06),  # 183,359 MiB
    ("NVIDIA H200", 989.0, 140.40),   # 143,771 MiB; H100's SXM compute
    ("H100", 989.0, 80.0),
    ("A100", 312.0, 80.0),
)


def chip(device_kind: str) -> tuple[float | None, float | None]:
  """(peak TFLOP/s, HBM GiB) of a device kind; (None, None) when unknown (CPU)."""
  for name, peak, hbm in CHIPS:
    if name.lower() in device_kind.lower():
      return peak, hbm
  return None, None


def block_flops(cfg: ModelConfig, seq_len: int) -> float:
  d, f = cfg.d_model, cfg.d_ff
  kv = cfg.num_kv_heads * cfg.head_dim
  return 2.0 * (2 * d * d + 2 * d * kv + 3 * d * f) + 4.0 * seq_len * d


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  head = 2.0 * cfg.d_model * cfg.vocab_size
  blocks = sum(cfg.block_evaluations_per_layer()) * block_flops(cfg, seq_len)
  return head + blocks + registry.get(cfg.arch).extra_flops(cfg)


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  return 3.0 * forward_flops_per_token(cfg, seq_len)


def mfu(cfg: ModelConfig, seq_len: int, tokens_per_second_per_device: float,
        device_kind: str) -> float | None:
  """Model FLOPs utilisation in [0, 1], or None where the peak is unknown."""
  peak, _ = chip(device_kind)
  if peak is None:
    return None
  achieved = train_flops_per_token(cfg, seq_len) * tokens_per_second_per_device
  return achieved / (peak * 1e12)


def throughput(cfg: ModelConfig, seq_len: int, tokens: int, seconds: float,
               devices: int, device_kind: str) -> dict[str, float | None]:
  """tokens/s, TFLOP/s per device and MFU of `tokens` trained in `seconds`."""
  per_device = tokens / seconds / devices
  return {
      "tokens_per_s": tokens / seconds,
      "tflops_per_device": train_flops_per_token(cfg, seq_len) * per_device
                           / 1e12,
      "mfu": mfu(cfg, seq_len, per_device, device_kind),
  }
