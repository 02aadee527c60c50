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
    (1, {"heads_key": None, "heads_value": "none",
         "activation_kv_heads": None},
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
  with pytest.raises(ShardingError, match="sharding.preset='zero3' is unknown"
                     "; choose one of dp, fsdp, fsdp_tp"):
    make_rules("zero3")
  with pytest.raises(ShardingError, match=r"sharding.rules.mlp_down='model' "
                     r"names \['model'\], not a mesh axis; .*data, fsdp, "
                     r"tensor.*rules.mlp_down=fsdp,tensor"):
    make_rules("fsdp", {"mlp_down": "model"})
  with pytest.raises(ShardingError, match=r"names \['model'\]"):
    make_rules("fsdp", {"mlp_down": "fsdp,model"})
  # `mlp` was one name for gate, up and down; now each has its own.
  with pytest.raises(ShardingError, match="sharding.rules.mlp names a "
                     "logical axis no array uses; .*mlp_gate, mlp_up, "
                     "mlp_down"):
    make_rules("fsdp", {"mlp": "tensor"})


# The rules table in the config: every logical name, overridable one by one.

# Written out by hand, independently of sharding.PRESETS: the layouts every
# preset had before each weight got its own name.
_PARAMS = ("embed", "heads_query", "heads_key", "heads_value", "heads_out",
           "kv", "mlp_gate", "mlp_up", "mlp_down", "vocab_embedding",
           "vocab_head", "layers", "norm")
_ACTS = ("activation_batch", "activation_length", "activation_embed",
         "activation_heads", "activation_kv_heads", "activation_kv",
         "activation_mlp", "activation_vocab")
_NONE = {name: "none" for name in _PARAMS + _ACTS}
EXPECTED_TABLES = {
    "dp": {**_NONE, "activation_batch": "data,fsdp"},
    "fsdp": {**_NONE, "activation_batch": "data,fsdp", "embed": "fsdp"},
    "fsdp_tp": {**_NONE, "activation_batch": "data,fsdp", "embed": "fsdp",
                "heads_query": "tensor", "heads_key": "tensor",
                "heads_value": "tensor", "heads_out": "tensor",
                "mlp_gate": "tensor", "mlp_up": "tensor",
                "mlp_down": "tensor", "vocab_embedding": "tensor",
                "vocab_head": "tensor", "activation_heads": "tensor",
                "activation_kv_heads": "tensor", "activation_mlp": "tensor",
                "activation_vocab": "tensor"},
}


def lm_config():
  from training import load_lm_config
  return load_lm_config("model=iiet,size=tiny")


@pytest.mark.parametrize("preset", sorted(EXPECTED_TABLES))
def test_config_holds_each_presets_whole_table(preset):
  cfg = lm_config()
  assert cfg.sharding.preset == "fsdp"
  cfg.sharding.preset = preset
  assert cfg.sharding.rules.to_dict() == EXPECTED_TABLES[preset]
  # make_rules reads the config's table (the preset fills nothing here).
  table = dict(make_rules(preset, cfg.sharding.rules))
  assert table == dict(make_rules("dp", cfg.sharding.rules))
  assert table["activation_batch"] == ("data", "fsdp")
  assert table["embed"] == (None if preset == "dp" else "fsdp")


def test_explicit_rules_survive_a_preset_change_in_either_order():
  cfg = lm_config()
  cfg.sharding.rules.mlp_down = "tensor"      # before the preset
  cfg.sharding.preset = "dp"
  cfg.sharding.rules.embed = "fsdp,tensor"    # after it
  want = {**EXPECTED_TABLES["dp"], "mlp_down": "tensor",
          "embed": "fsdp,tensor"}
  assert cfg.sharding.rules.to_dict() == want
  cfg.sharding.preset = "fsdp_tp"
  assert cfg.sharding.rules.to_dict() == {
      **EXPECTED_TABLES["fsdp_tp"], "embed": "fsdp,tensor"}
  # A resolved copy (as saved with a run) holds plain values.
  saved = cfg.copy_and_resolve_references()
  saved.sharding.preset = "dp"
  assert saved.sharding.rules.heads_query == "tensor"


def _parse_flags(argv):
  """The config with `argv`'s overrides, as on the command line."""
  from iiet_jax import overrides
  from training import ROOT
  return overrides.load(f"{ROOT}/configs/lm.py:model=iiet,size=tiny", argv)


@pytest.mark.parametrize("value,want", [
    ("tensor", "tensor"), ("fsdp,tensor", ("fsdp", "tensor")),
    ("none", None), ("", None), ("None", None)])
def test_rule_values_from_the_command_line(value, want):
  cfg = _parse_flags([f"--config.sharding.rules.embed={value}",
                      "--config.sharding.preset=fsdp_tp"])
  table = dict(make_rules(cfg.sharding.preset, cfg.sharding.rules))
  assert table["embed"] == want
  assert table["mlp_down"] == "tensor"   # re-derived from fsdp_tp


def test_every_logical_name_in_the_models_is_in_the_config_table():
  from iiet_jax.models import build_model, layers
  from iiet_jax.parallel.mesh import MESH_AXES
  cfg = lm_config()
  used = set()
  for arch in ("transformer", "pcformer", "iiet"):
    model = build_model(tiny_training_config(
        arch, tie_embeddings=False, num_kv_heads=2).model)
    boxed = jax.eval_shape(model.init, jax.random.key(0),
                           jax.ShapeDtypeStruct((1, 16), np.int32))
    for box in jax.tree.leaves(boxed["params"], is_leaf=lambda x: isinstance(
        x, nn.LogicallyPartitioned)):
      used.update(n for n in box.names if n)
  for names in (layers.BTD, layers.BTNH, layers.BTKH, layers.BTF,
                layers.BTV):
    used.update(names)
  table = set(cfg.sharding.rules)
  assert used - table == set(), "names the config cannot lay out"
  assert table - used == set(), "rules no array uses"
  assert not set(MESH_AXES) & table


def test_unknown_rule_key_on_the_command_line_lists_the_names():
  from iiet_jax import overrides
  cfg = lm_config()
  overrides.check_keys(cfg, ["sharding.rules.mlp_down", "sharding.preset",
                             "sharding.rules.activation_batch"])
  with pytest.raises(overrides.OverrideError, match=r"--config.sharding."
                     r"rules.mlp: no such config key. Closest valid keys: "
                     r".*sharding.rules.mlp_up"):
    overrides.check_keys(cfg, ["sharding.rules.mlp"])


def _partition_specs(run_dir):
  """{parameter path: partition spec} as Orbax saved the last checkpoint."""
  import base64
  import json
  step = max((p for p in (run_dir / "checkpoints").iterdir()
              if p.name.isdigit()), key=lambda p: int(p.name))
  saved = json.loads((step / "state" / "_sharding").read_text())
  specs = {}
  for key, value in saved.items():
    path = base64.b64decode(key).decode()
    if path.startswith("params."):
      specs[path[len("params."):]] = json.loads(value)["partition_spec"]
  return specs


def test_moving_one_weight_from_the_command_line(tmp_path):
  """`iiet train ... --config.sharding.rules.mlp_down=tensor` on 2 devices:
  the MLP's down projection alone is split over `tensor` as well."""
  import os
  import subprocess
  import sys
  from training import ROOT, write_counting_corpus
  train, val = write_counting_corpus(tmp_path / "data", 128)
  env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0 "
         "--xla_force_host_platform_device_count=2"}
  out = subprocess.run(
      [sys.executable, "-m", "iiet_jax.main", "train",
       "--config=configs/lm.py:model=transformer,size=tiny",
       f"--workdir={tmp_path / 'run'}", "--config.total_steps=1",
       "--config.mesh.data=1", "--config.mesh.fsdp=2",
       "--config.sharding.rules.mlp_down=tensor",
       "--config.model.num_layers=1", "--config.model.d_model=32",
       "--config.model.d_ff=64", "--config.model.vocab_size=128",
       "--config.batch_size=2", "--config.seq_len=16",
       "--config.optimizer.warmup_steps=0", "--config.data.source=tokens",
       f"--config.data.paths=('{train}',)",
       f"--config.data.validation_paths=('{val}',)",
       "--config.data.eval_batches=1"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  specs = _partition_specs(tmp_path / "run")
  down = "decoder.stack.layers.layer.block.mlp.down"
  assert specs[down] == [None, "tensor", "fsdp"]
  # Everything else keeps the fsdp preset's layout.
  moved = {path for path, spec in specs.items() if "tensor" in spec}
  assert moved == {down}
  assert specs["decoder.stack.layers.layer.block.mlp.up"] == [
      None, "fsdp", None]
  assert specs["embedding"] == [None, "fsdp"]
