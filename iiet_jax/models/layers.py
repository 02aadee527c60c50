"""Building blocks of the shared decoder block B_t (SPEC.md section 1).

Shape suffixes: B batch, T length, D width, N heads, H head size, F MLP width,
V vocabulary. Every parameter carries logical axis names; every activation a
logical `activation_*` constraint, so one rules table shards the whole model.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from iiet_jax.models.attention import causal_attention
from iiet_jax.models.config import ModelConfig

Array = jax.Array

# Logical names of activations; the sharding rules table maps them to mesh axes.
BTD = ("activation_batch", "activation_length", "activation_embed")
BTNH = ("activation_batch", "activation_length", "activation_heads",
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


def apply_rope(x_BTNH: Array, positions_BT: Array, base: float) -> Array:
  """Rotary embedding, rotate-half layout: pair i is (x[i], x[i + H/2])."""
  half = x_BTNH.shape[-1] // 2
  freq_K = base ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 /
                    x_BTNH.shape[-1])
  angle_BTK = positions_BT.astype(jnp.float32)[..., None] * freq_K
  cos_BT1K = jnp.cos(angle_BTK)[:, :, None, :]
  sin_BT1K = jnp.sin(angle_BTK)[:, :, None, :]
  x32 = x_BTNH.astype(jnp.float32)
  x1, x2 = x32[..., :half], x32[..., half:]
  out = jnp.concatenate([x1 * cos_BT1K - x2 * sin_BT1K,
                         x2 * cos_BT1K + x1 * sin_BT1K], axis=-1)
  return out.astype(x_BTNH.dtype)


class KVCache(NamedTuple):
  """Keys and values of block evaluations, leaves [..., B, S, N, H].

  The model's cache is [L, E, B, S, N, H]: one slot per (layer, block
  evaluation), S positions. New entries travel as [..., B, T, N, H].
  """
  key: Array
  value: Array


class LayerCache(NamedTuple):
  """The model's cache as one layer reads it: `slot(e)` is evaluation e's
  [B, S, N, H]. Indexing the whole cache here, not slicing it per layer and
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
  """Writes new entries [L, E, B, T, N, H] into the cache [L, E, B, S, N, H]
  at positions start_B[b].. of each row (in place inside a jitted loop)."""
  def write(cache, new):
    put = lambda c, n, s: jax.lax.dynamic_update_slice(c, n, (0, 0, s, 0, 0))
    return jax.vmap(put, in_axes=(2, 2, 0), out_axes=2)(
        cache, new.astype(cache.dtype), start_B)
  return jax.tree.map(write, kv, new)


def cached_attention(q_BTNH: Array, k_BTNH: Array, v_BTNH: Array,
                     cache: KVCache, start_B: Array) -> Array:
  """Attention of new tokens at start_B[b].. to the cache positions before
  them and, causally, to each other; float32 softmax like the training path.

  The cache is read where it lies: new keys join through the softmax, not by
  writing them into a copy of the slot first."""
  S, T = cache.key.shape[1], q_BTNH.shape[1]
  f32 = jnp.float32
  scale = q_BTNH.shape[-1] ** -0.5
  old_BNTS = jnp.einsum("btnh,bsnh->bnts", q_BTNH, cache.key,
                        preferred_element_type=f32) * scale
  new_BNTT = jnp.einsum("btnh,bsnh->bnts", q_BTNH, k_BTNH,
                        preferred_element_type=f32) * scale
  # Cache positions from start_B on are stale or empty.
  before_B11S = (jnp.arange(S) < start_B[:, None])[:, None, None, :]
  causal_TT = jnp.tril(jnp.ones((T, T), bool))
  logits_BNTX = jnp.concatenate(
      [jnp.where(before_B11S, old_BNTS, -jnp.inf),
       jnp.where(causal_TT, new_BNTT, -jnp.inf)], axis=-1)
  probs_BNTX = jax.nn.softmax(logits_BNTX, axis=-1).astype(v_BTNH.dtype)
  return (jnp.einsum("bnts,bsnh->btnh", probs_BNTX[..., :S], cache.value) +
          jnp.einsum("bnts,bsnh->btnh", probs_BNTX[..., S:], v_BTNH))


class Attention(nn.Module):
  """Causal multi-head self-attention with RoPE, no biases.

  Whole sequences go through `attention.causal_attention`, where
  `attention_impl` picks the kernel (XLA, cuDNN on GPU, splash on TPU). With
  `segment_ids`, tokens attend only within their own packed document.

  Decoding: with a `cache` slot [B, S, N, H], the tokens sit at
  `positions_BT` (contiguous per row) and attend to the cache before them and
  to each other. Returns (out, their new keys and values [B, T, N, H]), the
  latter None in training.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTD: Array, positions_BT: Array,
               segment_ids_BT: Array | None,
               cache: KVCache | None = None) -> tuple[Array, KVCache | None]:
    cfg = self.config
    dt = cfg.compute_dtype
    D, N, H = cfg.d_model, cfg.num_heads, cfg.head_dim
    projections = []
    for name in ("query", "key", "value"):
      w_DNH = param(self, name, (D, N, H), ("embed", "heads", "kv"))
      y_BTNH = jnp.einsum("btd,dnh->btnh", x_BTD, w_DNH.astype(dt))
      projections.append(checkpoint_name(constrain(y_BTNH, BTNH),
                                         f"{name}_proj"))
    q_BTNH, k_BTNH, v_BTNH = projections
    q_BTNH = apply_rope(q_BTNH, positions_BT, cfg.rope_base)
    k_BTNH = apply_rope(k_BTNH, positions_BT, cfg.rope_base)

    new_kv = None
    if cache is None:
      out_BTNH = causal_attention(q_BTNH, k_BTNH, v_BTNH, segment_ids_BT,
                                  cfg.attention_impl, BTNH)
    else:
      if segment_ids_BT is not None:
        raise ValueError("decoding with a KV cache takes no segment_ids")
      out_BTNH = cached_attention(q_BTNH, k_BTNH, v_BTNH, cache,
                                  positions_BT[:, 0])
      new_kv = KVCache(k_BTNH, v_BTNH)
    out_BTNH = checkpoint_name(constrain(out_BTNH, BTNH), "attention_out")
    w_NHD = param(self, "out", (N, H, D), ("heads", "kv", "embed"))
    out_BTD = jnp.einsum("btnh,nhd->btd", out_BTNH, w_NHD.astype(dt))
    return constrain(out_BTD, BTD), new_kv


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTD: Array) -> Array:
    cfg = self.config
    dt = cfg.compute_dtype
    gate_DF = param(self, "gate", (cfg.d_model, cfg.d_ff), ("embed", "mlp"))
    up_DF = param(self, "up", (cfg.d_model, cfg.d_ff), ("embed", "mlp"))
    down_FD = param(self, "down", (cfg.d_ff, cfg.d_model), ("mlp", "embed"))
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
