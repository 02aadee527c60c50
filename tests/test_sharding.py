"""Sharded state and steps on 8 fake CPU devices (set in conftest.py)."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from iiet_jax.parallel.mesh import MeshError, make_mesh
from iiet_jax.parallel.sharding import ShardingError, make_rules
from iiet_jax.train.build import build_training
from training import batches, tiny_training_config

MESHES = [((8, 1, 1), "dp"), ((2, 2, 2), "fsdp_tp"), ((1, 4, 2), "fsdp_tp"),
          ((2, 4, 1), "fsdp")]


def run(cfg, steps=3, devices=None, masked=False):
  training = build_training(cfg, devices=devices,
                            batch_keys=("tokens", "mask") if masked
                            else ("tokens",))
  state = training.init_state(0)
  first = jax.device_get(state.params)
  history = []
  for batch in batches(cfg, steps, masked=masked):
    state, metrics = training.train_step(state, batch)
    history.append(jax.device_get(metrics))
  return training, first, state, history


def test_eight_devices_available():
  assert jax.device_count() == 8


def test_fsdp_tp_specs_follow_rules():
  cfg = tiny_training_config("pcformer", mesh=(2, 2, 2), preset="fsdp_tp",
                             tie_embeddings=False)
  training = build_training(cfg)
  state = training.init_state(0)
  params = state.params
  layer = params["decoder"]["stack"]["layers"]["layer"]
  expected = {
      "embedding": (params["embedding"], P("tensor", "fsdp")),
      "head": (params["head"], P("fsdp", "tensor")),
      "query": (layer["block"]["attention"]["query"],
                P(None, "fsdp", "tensor", None)),
      "out": (layer["block"]["attention"]["out"],
              P(None, "tensor", None, "fsdp")),
      "gate": (layer["block"]["mlp"]["gate"], P(None, "fsdp", "tensor")),
      "down": (layer["block"]["mlp"]["down"], P(None, "tensor", "fsdp")),
      "norm": (layer["block"]["mlp_norm"]["scale"], P(None, None)),
      "history": (params["decoder"]["history"]["weight"], P(None, None)),
  }
  for name, (array, spec) in expected.items():
    assert array.sharding.spec == spec, name
  # Shards really are split: d=32 over fsdp=2, heads=4 over tensor=2.
  q = expected["query"][0]
  assert q.addressable_shards[0].data.shape == (2, 16, 2, 8)
  # Adam moments are laid out like the parameters.
  adam = state.opt_state[1][0]
  for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(adam.mu)):
    assert p.sharding.spec == m.sharding.spec


@pytest.mark.parametrize("mesh,preset", MESHES)
def test_every_parameter_follows_rules_table(mesh, preset):
  cfg = tiny_training_config("iiet", mesh=mesh, preset=preset)
  training = build_training(cfg)
  rules = make_rules(preset)
  boxed = jax.eval_shape(training.model.init, jax.random.key(0),
                         jax.ShapeDtypeStruct((1, 16), np.int32))["params"]
  is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
  boxes = jax.tree.leaves(boxed, is_leaf=is_box)
  state = training.init_state(0)
  arrays = jax.tree.leaves(state.params)
  assert len(boxes) == len(arrays)
  table = dict(rules)
  for box, array in zip(boxes, arrays):
    want = tuple(table[n] if n else None for n in box.names)
    got = tuple(array.sharding.spec) + (None,) * (array.ndim -
                                                 len(array.sharding.spec))
    assert got == want, (box.names, got, want)


# Every architecture on the richest mesh and IIET on all meshes by default;
# the remaining pairs are marked slow.
STEP_CASES = [
    pytest.param(arch, mesh, preset,
                 marks=() if arch == "iiet" or mesh == (2, 2, 2)
                 else pytest.mark.slow)
    for arch in ("transformer", "iiet", "pcformer") for mesh, preset in MESHES]


@pytest.mark.parametrize("arch,mesh,preset", STEP_CASES)
def test_step_on_mesh_equals_single_device(arch, mesh, preset):
  single = tiny_training_config(arch, mesh=(1, 1, 1), preset="dp")
  sharded = tiny_training_config(arch, mesh=mesh, preset=preset)
  _, first_1, state_1, hist_1 = run(single, devices=jax.devices()[:1])
  _, first_n, state_n, hist_n = run(sharded)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), first_1,
               first_n)
  for m1, mn in zip(hist_1, hist_n):
    for key in m1:
      np.testing.assert_allclose(mn[key], m1[key], rtol=2e-5, atol=1e-6,
                                 err_msg=key)
  assert hist_1[-1]["update_norm"] > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=2e-5, atol=2e-6), jax.device_get(state_1.params),
      jax.device_get(state_n.params))


GQA_LAYOUTS = [
    (2, {}, P(None, "fsdp", "tensor", None)),
    # Fewer kv heads than the tensor axis: replicated over it (Megatron).
    (1, {"kv_heads": None, "activation_kv_heads": None},
     P(None, "fsdp", None, None))]


def gqa_config(kv_heads, rules, mesh=(2, 2, 2), preset="fsdp_tp"):
  cfg = tiny_training_config("iiet", mesh=mesh, preset=preset,
                             num_kv_heads=kv_heads)
  cfg.sharding.rules.update(rules)
  return cfg


@pytest.mark.parametrize("kv_heads,rules,kv_spec", [
    GQA_LAYOUTS[0], pytest.param(*GQA_LAYOUTS[1], marks=pytest.mark.slow)])
def test_grouped_query_kv_projections_follow_the_rules(kv_heads, rules,
                                                       kv_spec):
  state = build_training(gqa_config(kv_heads, rules)).init_state(0)
  attention = state.params["decoder"]["stack"]["layers"]["layer"][
      "block"]["attention"]
  assert attention["query"].sharding.spec == P(None, "fsdp", "tensor", None)
  for name in ("key", "value"):
    assert attention[name].shape == (2, 32, kv_heads, 8)
    assert attention[name].sharding.spec == kv_spec, name


@pytest.mark.slow
@pytest.mark.parametrize("kv_heads,rules,kv_spec", GQA_LAYOUTS)
def test_grouped_query_step_on_mesh_equals_single_device(kv_heads, rules,
                                                         kv_spec):
  del kv_spec
  _, _, state_n, hist_n = run(gqa_config(kv_heads, rules), steps=2)
  _, _, state_1, hist_1 = run(gqa_config(kv_heads, {}, (1, 1, 1), "dp"),
                              steps=2, devices=jax.devices()[:1])
  for m1, mn in zip(hist_1, hist_n):
    np.testing.assert_allclose(mn["loss"], m1["loss"], rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=2e-5, atol=2e-6), jax.device_get(state_1.params),
      jax.device_get(state_n.params))


def test_kv_heads_that_do_not_split_name_the_key_projection():
  cfg = tiny_training_config("transformer", mesh=(1, 4, 2), preset="fsdp_tp",
                             num_kv_heads=1)
  with pytest.raises(ShardingError, match=r"\['attention'\]\['key'\] has "
                     r"shape .*dimension 1 is split over mesh axes tensor"):
    build_training(cfg)


def test_gradient_accumulation_equals_full_batch():
  full = tiny_training_config("iiet", mesh=(4, 1, 1))
  accum = tiny_training_config("iiet", mesh=(4, 1, 1))
  accum.micro_batches = 2
  _, _, state_a, hist_a = run(full, masked=True, devices=jax.devices()[:4])
  _, _, state_b, hist_b = run(accum, masked=True, devices=jax.devices()[:4])
  for a, b in zip(hist_a, hist_b):
    for key in ("loss", "grad_norm", "update_norm", "tokens"):
      np.testing.assert_allclose(b[key], a[key], rtol=1e-5, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               jax.device_get(state_a.params), jax.device_get(state_b.params))


def test_same_seed_is_bit_identical():
  cfg = tiny_training_config("pcformer", mesh=(2, 2, 2), preset="fsdp_tp")
  losses = [[float(h["loss"]) for h in run(cfg)[3]] for _ in range(2)]
  assert losses[0] == losses[1]
  assert len(set(losses[0])) == len(losses[0])


def test_tokens_seen_counts_masked_targets():
  cfg = tiny_training_config("transformer", mesh=(8, 1, 1))
  _, _, state, hist = run(cfg, masked=True)
  total = sum(float(h["tokens"]) for h in hist)
  assert float(hist[-1]["tokens_seen"]) == total
  assert 0 < total < 3 * cfg.batch_size * (cfg.seq_len - 1)
  assert int(state.step) == 3


@pytest.mark.parametrize("sizes,message", [
    (dict(data=3, fsdp=1, tensor=1), "multiply to 3 but there are 8"),
    (dict(data=-1, fsdp=-1, tensor=1), "At most one mesh axis may be -1"),
    (dict(data=-1, fsdp=3, tensor=1), "not divisible by the product 3"),
    (dict(data=0, fsdp=8, tensor=1), "positive or -1"),
])
def test_mesh_errors(sizes, message):
  with pytest.raises(MeshError, match=message):
    make_mesh(sizes)


def test_mesh_fills_wildcard_and_slices():
  mesh = make_mesh(dict(data=-1, fsdp=2, tensor=2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  mesh = make_mesh(dict(data=1, fsdp=-1, tensor=1), slices=2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}


def test_indivisible_dimension_names_the_parameter():
  cfg = tiny_training_config("iiet", mesh=(1, 1, 8), preset="fsdp_tp")
  with pytest.raises(ShardingError, match=r"\['attention'\]\['\w+'\] has "
                     r"shape .*dimension 4 is split over mesh axes tensor"):
    build_training(cfg)


def test_unused_mesh_axis_is_an_error():
  cfg = tiny_training_config("iiet", mesh=(4, 1, 2), preset="fsdp")
  with pytest.raises(ShardingError, match="no sharding rule uses it"):
    build_training(cfg)


def test_batch_must_split_over_data_shards():
  cfg = tiny_training_config("iiet", mesh=(8, 1, 1))
  cfg.micro_batches = 2
  with pytest.raises(ShardingError, match="micro-batches of 4 rows"):
    build_training(cfg)


def test_bad_rules():
  with pytest.raises(ShardingError, match="unknown"):
    make_rules("zero3")
  with pytest.raises(ShardingError, match="mesh axes are"):
    make_rules("fsdp", {"mlp": "model"})
  with pytest.raises(ShardingError, match="which no array uses"):
    make_rules("fsdp", {"ffn": "tensor"})
