"""Causal self-attention over whole sequences, by `model.attention_impl`.

  xla     `jax.nn.dot_product_attention`'s XLA path: the [B, N, T, T] logits
          are materialised (and kept for the backward pass unless remat).
  cudnn   cuDNN flash attention through `jax.nn.dot_product_attention`; needs
          an NVIDIA GPU and bfloat16 / float16 compute. Refused elsewhere.
  splash  Pallas splash attention (block-sparse flash attention, TPU): causal
          mask, packed documents by segment ids. Run per shard under a mesh;
          on a CPU host in Pallas interpret mode (how the tests check it).
  auto    splash on TPU when the length tiles, else JAX's choice (XLA in
          jax 0.10.2, which selects no fused kernel by itself).

Measured with libtpu's Mosaic compiler on a CPU host (`python -m iiet_jax.aot
--topology=v5e:4x4`, 1.3B, global batch 256 x 2048, FSDP over 16 chips, full
remat, 4 micro-batches), per-chip temporaries xla -> splash:
Transformer++ 5.45 -> 4.11 GiB, IIET 15.13 -> 10.09 GiB (with arguments
11.02 GiB: it fits v5e's 15.75 only with splash; docs/aot_memory.md). One
attention call alone, forward and backward at that micro-batch's per-chip
shape [4, 2048, 16, 128] bfloat16: 2.00 -> 0.07 GiB. Speed is not measured
(no TPU at hand).

Grouped-query attention (K kv heads, K dividing the N query heads; query
head n reads kv head n // (N / K)) is native in every path: XLA and cuDNN
through `jax.nn.dot_product_attention`, splash through its kernel's own
grouping. K/V are repeated only in one case, said at `splash_attention`.

Decoding with a KV cache does not come here (`layers.cached_attention`).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

from iiet_jax.models.config import ConfigError

Array = jax.Array

# Tile sizes tried for the splash kernel, largest first (MaxText's default
# is 512). Its blocks must be multiples of the 128 TPU lanes.
SPLASH_BLOCKS = (512, 256, 128)


def platform() -> str:
  """Where the traced computation runs: the mesh's devices (an AOT compile
  for a TPU topology on a CPU host is `tpu`), else the default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.abstract_device is not None:
    return mesh.abstract_device.platform
  return jax.default_backend()


def resolve(impl: str, length: int, where: str) -> str:
  """The kernel "auto" stands for on this platform and length.

  On TPU splash: the XLA path writes the full [B, N, T, T] float32 logits to
  HBM, splash streams them through VMEM blocks (1.3B IIET temporaries in the
  module docstring). Elsewhere JAX's own pick."""
  if impl != "auto":
    return impl
  if where == "tpu" and length % SPLASH_BLOCKS[-1] == 0:
    return "splash"
  return "auto"


def causal_attention(q_BTNH: Array, k_BTKH: Array, v_BTKH: Array,
                     segment_ids_BT: Array | None, impl: str,
                     names: Sequence[str],
                     kv_names: Sequence[str] | None = None) -> Array:
  """softmax(q k^T / sqrt(H) + causal [+ same-document] mask) v.

  `names` are the logical axis names of q (batch, length, heads, head size),
  `kv_names` those of k and v (default: `names`); splash runs per shard
  along the mesh axes the rules give them."""
  where = platform()
  impl = resolve(impl, q_BTNH.shape[1], where)
  if impl == "splash":
    return splash_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, names,
                            kv_names or names, interpret=_interpret(where))
  if impl == "cudnn":
    _check_cudnn(q_BTNH.dtype, where)
  mask = None
  if segment_ids_BT is not None:
    mask = (segment_ids_BT[:, None, :, None] ==
            segment_ids_BT[:, None, None, :])
  return jax.nn.dot_product_attention(
      q_BTNH, k_BTKH, v_BTKH, mask=mask, is_causal=True,
      implementation=None if impl == "auto" else impl)


def _interpret(where: str) -> bool:
  if where == "tpu":
    return False
  if where == "cpu":
    return True  # the Pallas interpreter: slow, exact, for tests
  raise ConfigError(
      f"model.attention_impl=splash is a TPU kernel (Pallas Mosaic); this "
      f"computation runs on {where}. Use model.attention_impl=cudnn or xla "
      f"there.")


def _check_cudnn(dtype, where: str) -> None:
  """cuDNN's preconditions, checked before XLA would fail deep inside."""
  if where != "gpu":
    raise ConfigError(
        f"model.attention_impl=cudnn runs cuDNN flash attention and needs an "
        f"NVIDIA GPU with cuDNN (jax[cuda12]); this computation runs on "
        f"{where}. Use model.attention_impl=xla, or splash on TPU.")
  if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
    raise ConfigError(
        f"model.attention_impl=cudnn needs bfloat16 or float16 compute; "
        f"model.dtype is {jnp.dtype(dtype).name}.")


def splash_block(length: int) -> int:
  """The largest splash tile that divides the sequence length."""
  for block in SPLASH_BLOCKS:
    if length % block == 0:
      return block
  raise ConfigError(
      f"model.attention_impl=splash tiles the sequence in blocks of "
      f"{SPLASH_BLOCKS[-1]} tokens, but this sequence has length {length}; "
      f"use a seq_len that is a multiple of {SPLASH_BLOCKS[-1]}, or "
      f"model.attention_impl=xla.")


def splash_attention(q_BTNH: Array, k_BTKH: Array, v_BTKH: Array,
                     segment_ids_BT: Array | None, names: Sequence[str],
                     kv_names: Sequence[str], interpret: bool) -> Array:
  """Splash attention on [B, T, N, H] queries, [B, T, K, H] keys / values;
  per shard of batch and heads.

  The kernel groups queries itself (query head n reads kv head n // G). On a
  mesh, kv heads split like the query heads keep that grouping per shard. If
  the rules lay them out otherwise (e.g. `heads_key` / `heads_value`
  replicated because K is smaller than the tensor axis), every shard
  receives all K kv heads and takes, for each of its query heads, the kv
  head it reads: the one place K/V are repeated, on the shard only."""
  length = q_BTNH.shape[1]
  block = splash_block(length)
  groups = q_BTNH.shape[2] // k_BTKH.shape[2]
  # The kernel takes unscaled logits; scaling q is the cheapest place.
  q_BTNH = (q_BTNH.astype(jnp.float32) * q_BTNH.shape[-1] ** -0.5).astype(
      q_BTNH.dtype)
  mesh = jax.sharding.get_abstract_mesh()
  batch = heads_axes = kv_axes = None
  if not mesh.empty:
    batch, _, heads_axes, _ = nn.logical_to_mesh_axes(tuple(names))
    kv_axes = nn.logical_to_mesh_axes(tuple(kv_names))[2]
  # kv heads go with their query heads, or whole to every shard.
  aligned = kv_axes == heads_axes

  def per_shard(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT):
    # Built here, for the heads of this shard.
    heads = q_BTNH.shape[2]
    if not aligned and heads_axes is not None:
      first = jax.lax.axis_index(heads_axes) * heads
      kv_N = (first + jnp.arange(heads)) // groups
      k_BTKH, v_BTKH = (jnp.take(x, kv_N, axis=2) for x in (k_BTKH, v_BTKH))
    mask = splash.MultiHeadMask([splash.CausalMask((length, length))] * heads)
    kernel = splash.make_splash_mha(
        mask, block_sizes=_block_sizes(block), head_shards=1, q_seq_shards=1,
        interpret=interpret)

    def one_row(q_TNH, k_TKH, v_TKH, segment_ids_T):
      to_NTH = lambda x: jnp.swapaxes(x, 0, 1)
      segments = (None if segment_ids_T is None else
                  splash.SegmentIds(q=segment_ids_T, kv=segment_ids_T))
      out_NTH = kernel(to_NTH(q_TNH), to_NTH(k_TKH), to_NTH(v_TKH),
                       segment_ids=segments)
      return to_NTH(out_NTH)

    return jax.vmap(one_row)(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT)

  if segment_ids_BT is not None:
    segment_ids_BT = segment_ids_BT.astype(jnp.int32)
  if mesh.empty:
    return per_shard(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT)
  # Length and head size stay whole on each shard: the kernel tiles them.
  q_spec = PartitionSpec(batch, None, heads_axes, None)
  kv_spec = PartitionSpec(batch, None, heads_axes if aligned else None, None)
  segment_spec = None if segment_ids_BT is None else PartitionSpec(batch, None)
  # check_vma=False: pallas_call does not declare how its outputs vary.
  return jax.shard_map(
      per_shard, in_specs=(q_spec, kv_spec, kv_spec, segment_spec),
      out_specs=q_spec, check_vma=False)(
          q_BTNH, k_BTKH, v_BTKH, segment_ids_BT)


def _block_sizes(block: int) -> splash.BlockSizes:
  return splash.BlockSizes(
      block_q=block, block_kv=block, block_kv_compute=block,
      block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
      block_q_dq=block, block_kv_dq=block)
