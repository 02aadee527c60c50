"""Fused attention kernels against the XLA path (models/attention.py).

Splash runs in Pallas interpret mode on this CPU host: the same kernel code
(block tiling, causal block skipping, segment masks, its own backward pass)
executed by the interpreter, so these tests check its numbers. cuDNN cannot
run here, and jax 0.10.2 cannot even lower it without a GPU: its cuDNN path
asks for the cuDNN version while tracing ("cuDNN is not detected.", also
under `jax.export(..., platforms=["cuda"])`). Its equality with XLA is
therefore only tested where a GPU is present (skipped otherwise).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from support import init_params, random_tokens, rel_err, small_config, with_
from iiet_jax.models import ConfigError, build_model
from iiet_jax.models.attention import causal_attention, resolve
from iiet_jax.models.layers import BTKH, BTNH
from iiet_jax.parallel.mesh import make_mesh
from iiet_jax.parallel.sharding import axis_rules, make_rules
from iiet_jax.train.loss import next_token_sums
from training import ROOT

B, T, N, H = 2, 256, 2, 16   # T: two splash tiles of 128


def qkv(seed=0, shape=(B, T, N, H), dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(seed), 4)
  q, k, v, w = (jax.random.normal(key, shape, dtype) for key in keys)
  return q, k, v, w


def packed_segments(lengths_per_row):
  """Segment ids [B, T] of rows packed with documents of these lengths."""
  rows = [np.repeat(np.arange(len(ls)), ls) for ls in lengths_per_row]
  return jnp.asarray(np.stack(rows), jnp.int32)


SEGMENTS = {
    "unpacked": None,
    # Boundaries inside a tile and on one, a one-token document.
    "packed": packed_segments([[100, 28, 1, 127], [128, 128]]),
}


def attend(impl, q, k, v, segment_ids):
  return causal_attention(q, k, v, segment_ids, impl, BTNH)


@pytest.mark.parametrize("segments", SEGMENTS)
def test_splash_equals_xla_forward_and_gradients(segments):
  segment_ids = SEGMENTS[segments]
  q, k, v, w = qkv()

  def loss(impl):
    return lambda q, k, v: jnp.sum(w * attend(impl, q, k, v, segment_ids))

  out = {impl: jax.jit(lambda q, k, v, i=impl: attend(i, q, k, v,
                                                      segment_ids))(q, k, v)
         for impl in ("splash", "xla")}
  assert rel_err(out["splash"], out["xla"]) < 1e-5
  grads = {impl: jax.jit(jax.grad(loss(impl), argnums=(0, 1, 2)))(q, k, v)
           for impl in ("splash", "xla")}
  for name, g_splash, g_xla in zip("qkv", grads["splash"], grads["xla"]):
    assert rel_err(g_splash, g_xla) < 1e-5, name


def test_splash_is_causal_and_keeps_documents_apart():
  """Changing the last document changes nothing before it: no future and no
  other document leaks in (the equality above could pass on a kernel that
  ignored both only if XLA did too; this checks the mask itself)."""
  segment_ids = SEGMENTS["packed"]
  q, k, v, _ = qkv()
  start = 129  # row 0: the last document is tokens 129..255
  k2 = k.at[0, start:].add(1.0)
  v2 = v.at[0, start:].add(1.0)
  run = jax.jit(lambda q, k, v: attend("splash", q, k, v, segment_ids))
  a, b = run(q, k, v), run(q, k2, v2)
  np.testing.assert_array_equal(a[0, :start], b[0, :start])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.allclose(a[0, start:], b[0, start:])


def test_splash_runs_the_pallas_kernel():
  q, k, v, _ = qkv()
  jaxpr = str(jax.make_jaxpr(lambda q, k, v: attend("splash", q, k, v,
                                                    None))(q, k, v))
  assert "pallas_call" in jaxpr
  assert "pallas_call" not in str(jax.make_jaxpr(
      lambda q, k, v: attend("xla", q, k, v, None))(q, k, v))


def test_splash_refuses_lengths_it_cannot_tile():
  q, k, v, _ = qkv(shape=(1, 96, N, H))
  with pytest.raises(ConfigError, match=r"attention_impl=splash.*length 96"):
    attend("splash", q, k, v, None)


def test_splash_per_shard_on_a_mesh():
  """Batch over `data`, heads over `tensor` (fsdp_tp rules): the kernel runs
  inside shard_map on each device's [B/2, T, N/2, H] block."""
  mesh = make_mesh({"data": 2, "fsdp": 1, "tensor": 2},
                   devices=jax.devices()[:4])
  rules = make_rules("fsdp_tp")
  segment_ids = SEGMENTS["packed"]
  q, k, v, w = qkv()
  expected = attend("xla", q, k, v, segment_ids)
  expected_grads = jax.grad(
      lambda q: jnp.sum(w * attend("xla", q, k, v, segment_ids)))(q)
  spec = NamedSharding(mesh, P("data", None, "tensor", None))
  q, k, v, w = (jax.device_put(x, spec) for x in (q, k, v, w))
  segment_ids = jax.device_put(segment_ids, NamedSharding(mesh, P("data")))

  def loss(q, k, v, segment_ids):
    return jnp.sum(w * attend("splash", q, k, v, segment_ids))

  with jax.set_mesh(mesh), axis_rules(rules):
    fn = jax.jit(lambda *a: attend("splash", *a))
    assert "shard_map" in str(jax.make_jaxpr(fn)(q, k, v, segment_ids))
    out = fn(q, k, v, segment_ids)
    grads = jax.jit(jax.grad(loss))(q, k, v, segment_ids)
  assert out.sharding.spec == P("data", None, "tensor", None)
  assert rel_err(out, expected) < 1e-5
  assert rel_err(grads, expected_grads) < 1e-5


def gqa_qkv(kv_heads, seed=0):
  """4 query heads over `kv_heads` key / value heads."""
  q, _, _, w = qkv(seed, shape=(B, T, 4, H))
  _, k, v, _ = qkv(seed + 1, shape=(B, T, kv_heads, H))
  return q, k, v, w


def repeated_xla(q, k, v, segment_ids):
  """The XLA path on kv heads repeated by hand: query head n reads n // G."""
  group = q.shape[2] // k.shape[2]
  rep = lambda x: jnp.repeat(x, group, axis=2)
  return attend("xla", q, rep(k), rep(v), segment_ids)


@pytest.mark.parametrize("kv_heads",
                         [2, pytest.param(1, marks=pytest.mark.slow)])
def test_grouped_queries_splash_and_xla_equal_repeated_heads(kv_heads):
  segment_ids = SEGMENTS["packed"]
  q, k, v, w = gqa_qkv(kv_heads)
  want = jax.jit(repeated_xla)(q, k, v, segment_ids)
  want_grads = jax.jit(jax.grad(lambda *a: jnp.sum(w * repeated_xla(
      *a, segment_ids)), argnums=(0, 1, 2)))(q, k, v)
  for impl in ("xla", "splash"):
    fn = lambda q, k, v, i=impl: attend(i, q, k, v, segment_ids)
    assert rel_err(jax.jit(fn)(q, k, v), want) < 1e-5, impl
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(w * fn(*a)),
                             argnums=(0, 1, 2)))(q, k, v)
    for name, g, g_want in zip("qkv", grads, want_grads):
      assert g.shape == g_want.shape
      assert rel_err(g, g_want) < 1e-5, (impl, name)


@pytest.mark.parametrize("kv_heads,kv_rule", [
    pytest.param(2, "tensor", marks=pytest.mark.slow), (1, None)])
def test_grouped_queries_splash_per_shard(kv_heads, kv_rule):
  """Heads over tensor=2: 2 kv heads split with their query heads; 1 kv head
  replicated (rules heads_key, heads_value None), each shard taking the
  one it reads."""
  mesh = make_mesh({"data": 2, "fsdp": 1, "tensor": 2},
                   devices=jax.devices()[:4])
  rules = make_rules("fsdp_tp", {"heads_key": kv_rule, "heads_value": kv_rule,
                                 "activation_kv_heads": kv_rule})
  segment_ids = SEGMENTS["packed"]
  q, k, v, w = gqa_qkv(kv_heads, seed=2)
  want = repeated_xla(q, k, v, segment_ids)
  want_grads = jax.grad(lambda *a: jnp.sum(w * repeated_xla(
      *a, segment_ids)), argnums=(0, 1, 2))(q, k, v)
  heads = NamedSharding(mesh, P("data", None, "tensor", None))
  kv_spec = NamedSharding(mesh, P("data", None, kv_rule, None))
  q, w = (jax.device_put(x, heads) for x in (q, w))
  k, v = (jax.device_put(x, kv_spec) for x in (k, v))
  segment_ids = jax.device_put(segment_ids, NamedSharding(mesh, P("data")))
  fn = lambda q, k, v: causal_attention(q, k, v, segment_ids, "splash", BTNH,
                                        BTKH)
  with jax.set_mesh(mesh), axis_rules(rules):
    out = jax.jit(fn)(q, k, v)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(w * fn(*a)),
                             argnums=(0, 1, 2)))(q, k, v)
  assert rel_err(out, want) < 1e-5
  for name, g, g_want in zip("qkv", grads, want_grads):
    assert rel_err(g, g_want) < 1e-5, name


# Compiles the splash gradient for 4 v5e chips (batch over data, heads over
# tensor) through libtpu's Mosaic compiler, on this CPU host. In a subprocess:
# libtpu must load before JAX, as in `python -m iiet_jax.aot`.
MOSAIC_CHECK = textwrap.dedent("""
    import iiet_jax.aot, jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from iiet_jax.models.attention import causal_attention
    from iiet_jax.models.layers import BTNH
    from iiet_jax.parallel.mesh import make_mesh
    from iiet_jax.parallel.sharding import axis_rules, make_rules
    devices = iiet_jax.aot.topology_devices("v5e:2x2")
    mesh = make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, devices=devices)
    x = jax.ShapeDtypeStruct((4, 256, 4, 128), jnp.bfloat16,
        sharding=NamedSharding(mesh, P("data", None, "tensor", None)))
    seg = jax.ShapeDtypeStruct((4, 256), jnp.int32,
                               sharding=NamedSharding(mesh, P("data")))
    def loss(q, k, v, s):
      out = causal_attention(q, k, v, s, "splash", BTNH)
      return jnp.sum(out.astype(jnp.float32))
    with jax.set_mesh(mesh), axis_rules(make_rules("fsdp_tp")):
      lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x, seg)
    lowered.compile()
    print("mosaic kernels", lowered.as_text().count("tpu_custom_call"))
""")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu is installed by the tpu extra")
def test_splash_compiles_for_a_tpu_topology():
  out = subprocess.run([sys.executable, "-c", MOSAIC_CHECK], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  # Forward, dq and dkv kernels, not interpreted: Mosaic custom calls.
  assert "mosaic kernels 3" in out.stdout


@pytest.mark.parametrize("arch", ["iiet", "transformer"])
def test_model_loss_and_gradients_match_xla(arch):
  """The whole model's next-token loss and parameter gradients, packed rows
  with positions restarting per document."""
  cfg = small_config(arch=arch, num_layers=2, iterations=1, max_seq_len=128)
  tokens = random_tokens(cfg, 2, 128)
  segment_ids = packed_segments([[50, 78], [128]])
  positions = jnp.asarray(np.stack([np.r_[np.arange(50), np.arange(78)],
                                    np.arange(128)]), jnp.int32)
  params = init_params(cfg, tokens)

  def loss_and_grads(impl):
    model = build_model(with_(cfg, attention_impl=impl))

    def loss(params):
      logits = model.apply({"params": params}, tokens, positions_BT=positions,
                           segment_ids_BT=segment_ids)
      sums = next_token_sums(logits, tokens, None, segment_ids)
      return sums["nll"] / sums["count"]
    return jax.jit(jax.value_and_grad(loss))(params)

  loss_splash, grads_splash = loss_and_grads("splash")
  loss_xla, grads_xla = loss_and_grads("xla")
  assert abs(float(loss_splash) - float(loss_xla)) < 1e-5
  for (path, g_s), g_x in zip(jax.tree_util.tree_leaves_with_path(grads_splash),
                              jax.tree.leaves(grads_xla)):
    assert rel_err(g_s, g_x) < 1e-4, jax.tree_util.keystr(path)


def test_auto_picks_splash_only_on_tpu_for_tileable_lengths():
  assert resolve("auto", 2048, "tpu") == "splash"
  assert resolve("auto", 100, "tpu") == "auto"      # JAX's choice: XLA
  assert resolve("auto", 2048, "cpu") == "auto"
  assert resolve("auto", 2048, "gpu") == "auto"
  assert resolve("xla", 2048, "tpu") == "xla"


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="has a GPU")
def test_cudnn_fails_early_without_a_gpu():
  q, k, v, _ = qkv(dtype=jnp.bfloat16)
  with pytest.raises(ConfigError, match=r"model.attention_impl=cudnn.*GPU"):
    jax.jit(lambda q, k, v: attend("cudnn", q, k, v, None))(q, k, v)


@pytest.mark.skipif(jax.default_backend() != "gpu",
                    reason="cuDNN needs an NVIDIA GPU; not checkable here")
def test_cudnn_equals_xla_on_gpu():
  q, k, v, _ = qkv(dtype=jnp.bfloat16)
  segment_ids = SEGMENTS["packed"]
  a = jax.jit(lambda *x: attend("cudnn", *x, segment_ids))(q, k, v)
  b = jax.jit(lambda *x: attend("xla", *x, segment_ids))(q, k, v)
  assert rel_err(a, b) < 2e-2   # bfloat16
