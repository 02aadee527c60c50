"""Building blocks of the shared decoder block B_t (SPEC.md section 1).

Shape suffixes: B batch, T length, D width, N query heads, K key / value
heads (grouped-query attention: G = N / K query heads per kv head), H head
size, R = H / 2 rotated pairs, F MLP width, V vocabulary. Every parameter carries logical axis names; every activation a
logical `activation_*` constraint, so one rules table shards the whole model.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from iiet_jax.models.attention import causal_attention
from iiet_jax.models.config import ModelConfig

Array = jax.Array

# Logical names of activations; the sharding rules table maps them to mesh axes.
BTD = ("activation_batch", "activation_length", "activation_embed")
BTNH = ("activation_batch", "activation_length", "activation_heads",
        "activation_kv")
# Keys and values: their heads have their own name, so tensor parallelism can
# lay them out apart from the query heads (parallel/sharding.py).
BTKH = ("activation_batch", "activation_length", "activation_kv_heads",
        "activation_kv")
BTF = ("activation_batch", "activation_length", "activation_mlp")
BTV = ("activation_batch", "activation_length", "activation_vocab")


def constrain(x: Array, names: Sequence[str | None]) -> Array:
  return nn.with_logical_constraint(x, tuple(names))


def param(module: nn.Module, name: str, shape: Sequence[int],
          axes: Sequence[str | None], init=None) -> Array:
  """A float parameter with logical axis names, stored in `param_dtype`."""
  cfg: ModelConfig = module.config
  init = init or nn.initializers.normal(stddev=cfg.init_std)
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)),
                      tuple(shape), cfg.weight_dtype)


class RMSNorm(nn.Module):
  """g * x / sqrt(mean(x^2) + eps), normalised in float32 then cast back."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTD: Array) -> Array:
    cfg = self.config
    scale_D = param(self, "scale", (x_BTD.shape[-1],), ("norm",),
                    nn.initializers.ones)
    x32 = x_BTD.astype(jnp.float32)
    y32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True)
                              + cfg.rms_eps)
    return y32.astype(cfg.compute_dtype) * scale_D.astype(cfg.compute_dtype)


class LayerNorm(nn.Module):
  """LayerNorm with gain and bias (the LNp / LNc / LNrk norms), in float32."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTD: Array) -> Array:
    cfg = self.config
    d = x_BTD.shape[-1]
    scale_D = param(self, "scale", (d,), ("norm",), nn.initializers.ones)
    bias_D = param(self, "bias", (d,), ("norm",), nn.initializers.zeros)
    return layer_norm(x_BTD, scale_D, bias_D, cfg.ln_eps).astype(
        cfg.compute_dtype)


def layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
  """Float32 LayerNorm used by `LayerNorm` and by norms shared across layers."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, -1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + eps)
  return y * scale.astype(jnp.float32) + bias.astype(jnp.float32)


def rope_frequencies(cfg: ModelConfig) -> np.ndarray:
  """The H/2 rotation frequencies of `cfg.rope_type`, float32 (static).

  llama3 follows transformers' `_compute_llama3_parameters`: wavelengths
  longer than original_max / low_freq_factor are slowed by `factor`, shorter
  than original_max / high_freq_factor kept, those between interpolated."""
  H = cfg.head_dim
  freq_R = 1.0 / cfg.rope_base ** (np.arange(0, H, 2, dtype=np.float64) / H)
  if cfg.rope_type == "default":
    return freq_R.astype(np.float32)
  factor, low, high = (cfg.rope_factor, cfg.rope_low_freq_factor,
                       cfg.rope_high_freq_factor)
  old_len = cfg.rope_original_max_positions
  wavelen_R = 2 * np.pi / freq_R
  slow_R = np.where(wavelen_R > old_len / low, freq_R / factor, freq_R)
  smooth_R = (old_len / wavelen_R - low) / (high - low)
  mid_R = (wavelen_R >= old_len / high) & (wavelen_R <= old_len / low)
  blended_R = (1 - smooth_R) * slow_R / factor + smooth_R * slow_R
  return np.where(mid_R, blended_R, slow_R).astype(np.float32)


def apply_rope(x_BTNH: Array, positions_BT: Array, cfg: ModelConfig) -> Array:
  """Rotary embedding, rotate-half layout: pair i is (x[i], x[i + H/2])."""
  half = x_BTNH.shape[-1] // 2
  freq_R = jnp.asarray(rope_frequencies(cfg))
  angle_BTR = positions_BT.astype(jnp.float32)[..., None] * freq_R
  cos_BT1R = jnp.cos(angle_BTR)[:, :, None, :]
  sin_BT1R = jnp.sin(angle_BTR)[:, :, None, :]
  x32 = x_BTNH.astype(jnp.float32)
  x1, x2 = x32[..., :half], x32[..., half:]
  out = jnp.concatenate([x1 * cos_BT1R - x2 * sin_BT1R,
                         x2 * cos_BT1R + x1 * sin_BT1R], axis=-1)
  return out.astype(x_BTNH.dtype)


class KVCache(NamedTuple):
  """Keys and values of block evaluations, leaves [..., B, S, K, H].

  The model's cache is [L, E, B, S, K, H]: one slot per (layer, block
  evaluation), S positions, K kv heads. New entries travel as
  [..., B, T, K, H].
  """
  key: Array
  value: Array


class LayerCache(NamedTuple):
  """The model's cache as one layer reads it: `slot(e)` is evaluation e's
  [B, S, K, H]. Indexing the whole cache here, not slicing it per layer and
  per iteration, keeps decoding free of cache copies."""
  kv: KVCache
  layer: Array | int

  def slot(self, e) -> KVCache:
    return KVCache(self.kv.key[self.layer, e], self.kv.value[self.layer, e])


def kv_slot(cache: LayerCache | None, e) -> KVCache | None:
  """Evaluation e's slot (None without a cache)."""
  return None if cache is None else cache.slot(e)


def kv_stack(entries: Sequence[KVCache | None]) -> KVCache | None:
  """Per-evaluation new entries -> one [E, ...] KVCache (None in training)."""
  if entries[0] is None:
    return None
  return jax.tree.map(lambda *a: jnp.stack(a), *entries)


def write_kv(kv: KVCache, new: KVCache, start_B: Array) -> KVCache:
  """Writes new entries [L, E, B, T, K, H] into the cache [L, E, B, S, K, H]
  at positions start_B[b].. of each row (in place inside a jitted loop)."""
  def write(cache, new):
    put = lambda c, n, s: jax.lax.dynamic_update_slice(c, n, (0, 0, s, 0, 0))
    return jax.vmap(put, in_axes=(2, 2, 0), out_axes=2)(
        cache, new.astype(cache.dtype), start_B)
  return jax.tree.map(write, kv, new)


def cached_attention(q_BTNH: Array, k_BTKH: Array, v_BTKH: Array,
                     cache: KVCache, start_B: Array) -> Array:
  """Attention of new tokens at start_B[b].. to the cache positions before
  them and, causally, to each other; float32 softmax like the training path.

  The cache is read where it lies: new keys join through the softmax, not by
  writing them into a copy of the slot first. Grouped queries are a reshape
  of q to [B, T, K, G, H], so kv heads are never repeated."""
  S, T = cache.key.shape[1], q_BTNH.shape[1]
  B, _, N, H = q_BTNH.shape
  K = k_BTKH.shape[2]
  q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
  f32 = jnp.float32
  scale = H ** -0.5
  old_BKGTS = jnp.einsum("btkgh,bskh->bkgts", q_BTKGH, cache.key,
                         preferred_element_type=f32) * scale
  new_BKGTT = jnp.einsum("btkgh,bskh->bkgts", q_BTKGH, k_BTKH,
                         preferred_element_type=f32) * scale
  # Cache positions from start_B on are stale or empty.
  before_B111S = (jnp.arange(S) < start_B[:, None])[:, None, None, None, :]
  causal_TT = jnp.tril(jnp.ones((T, T), bool))
  logits_BKGTX = jnp.concatenate(
      [jnp.where(before_B111S, old_BKGTS, -jnp.inf),
       jnp.where(causal_TT, new_BKGTT, -jnp.inf)], axis=-1)
  probs_BKGTX = jax.nn.softmax(logits_BKGTX, axis=-1).astype(v_BTKH.dtype)
  out_BTKGH = (
      jnp.einsum("bkgts,bskh->btkgh", probs_BKGTX[..., :S], cache.value) +
      jnp.einsum("bkgts,bskh->btkgh", probs_BKGTX[..., S:], v_BTKH))
  return out_BTKGH.reshape(B, T, N, H)


class Attention(nn.Module):
  """Causal self-attention with RoPE and grouped queries, no biases.

  N query heads share K = `num_kv_heads` key / value heads (K = N: plain
  multi-head attention). Whole sequences go through
  `attention.causal_attention`, where `attention_impl` picks the kernel (XLA,
  cuDNN on GPU, splash on TPU). With `segment_ids`, tokens attend only within
  their own packed document.

  Decoding: with a `cache` slot [B, S, K, H], the tokens sit at
  `positions_BT` (contiguous per row) and attend to the cache before them and
  to each other. Returns (out, their new keys and values [B, T, K, H]), the
  latter None in training.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTD: Array, positions_BT: Array,
               segment_ids_BT: Array | None,
               cache: KVCache | None = None) -> tuple[Array, KVCache | None]:
    cfg = self.config
    dt = cfg.compute_dtype
    D, N, K, H = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def project(name, heads, names):
      # One logical name per weight (heads_query, ...): each moves alone.
      w_DNH = param(self, name, (D, heads, H),
                    ("embed", f"heads_{name}", "kv"))
      y_BTNH = jnp.einsum("btd,dnh->btnh", x_BTD, w_DNH.astype(dt))
      return checkpoint_name(constrain(y_BTNH, names), f"{name}_proj")

    q_BTNH = project("query", N, BTNH)
    k_BTKH = project("key", K, BTKH)
    v_BTKH = project("value", K, BTKH)
    q_BTNH = apply_rope(q_BTNH, positions_BT, cfg)
    k_BTKH = apply_rope(k_BTKH, positions_BT, cfg)

    new_kv = None
    if cache is None:
      out_BTNH = causal_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT,
                                  cfg.attention_impl, BTNH, BTKH)
    else:
      if segment_ids_BT is not None:
        raise ValueError("decoding with a KV cache takes no segment_ids")
      out_BTNH = cached_attention(q_BTNH, k_BTKH, v_BTKH, cache,
                                  positions_BT[:, 0])
      new_kv = KVCache(k_BTKH, v_BTKH)
    out_BTNH = checkpoint_name(constrain(out_BTNH, BTNH), "attention_out")
    w_NHD = param(self, "out", (N, H, D), ("heads_out", "kv", "embed"))
    out_BTD = jnp.einsum("btnh,nhd->btd", out_BTNH, w_NHD.astype(dt))
    return constrain(out_BTD, BTD), new_kv


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTD: Array) -> Array:
    cfg = self.config
    dt = cfg.compute_dtype
    D, F = cfg.d_model, cfg.d_ff
    gate_DF = param(self, "gate", (D, F), ("embed", "mlp_gate"))
    up_DF = param(self, "up", (D, F), ("embed", "mlp_up"))
    down_FD = param(self, "down", (F, D), ("mlp_down", "embed"))
    gate_BTF = checkpoint_name(constrain(x_BTD @ gate_DF.astype(dt), BTF),
                               "mlp_gate")
    up_BTF = checkpoint_name(constrain(x_BTD @ up_DF.astype(dt), BTF),
                             "mlp_up")
    hidden_BTF = nn.silu(gate_BTF) * up_BTF
    return constrain(hidden_BTF @ down_FD.astype(dt), BTD)


class DecoderBlock(nn.Module):
  """B_t(x): a = x + Attn(RMSNorm(x)); B_t(x) = a + MLP(RMSNorm(a)).

  Returns (B_t(x), new keys and values): decoding reads this evaluation's
  `cache` slot and hands back the entries for the new tokens (None in
  training).
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTD: Array, positions_BT: Array,
               segment_ids_BT: Array | None,
               cache: KVCache | None = None) -> tuple[Array, KVCache | None]:
    x_BTD = constrain(x_BTD, BTD)
    attn, new_kv = Attention(self.config, name="attention")(
        RMSNorm(self.config, name="attention_norm")(x_BTD), positions_BT,
        segment_ids_BT, cache)
    a_BTD = x_BTD + attn
    out = a_BTD + MLP(self.config, name="mlp")(
        RMSNorm(self.config, name="mlp_norm")(a_BTD))
    return checkpoint_name(constrain(out, BTD), "block_out"), new_kv
