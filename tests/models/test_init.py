"""Initial values: history averaging, norm gains, N(0, 0.02) projections."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from support import init_params, random_tokens, small_config
from iiet_jax.models import build_model


@pytest.mark.parametrize("arch", ["iiet", "pcformer"])
def test_history_init_is_running_average(arch):
  cfg = small_config(arch=arch, num_layers=5)
  params = init_params(cfg, random_tokens(cfg, 1, 4), perturb=False)
  L = cfg.num_layers
  for name in ("weight", "weight_c"):
    w = np.asarray(params["decoder"]["history"][name])
    assert w.shape == (L + 1, L + 1)
    for t in range(L + 1):
      np.testing.assert_allclose(w[t, : t + 1], 1.0 / (t + 1), rtol=1e-7)
      assert np.all(w[t, t + 1:] == 0.0)


def test_pcformer_shared_parameters_init():
  cfg = small_config(arch="pcformer", pc_order=4)
  dec = init_params(cfg, random_tokens(cfg, 1, 4), perturb=False)["decoder"]
  np.testing.assert_array_equal(dec["alpha"], [0.5])
  assert dec["rk_scale"].shape == dec["rk_bias"].shape == (4, cfg.d_model)
  np.testing.assert_array_equal(dec["rk_scale"], 1.0)
  np.testing.assert_array_equal(dec["rk_bias"], 0.0)


@pytest.mark.parametrize("arch", ["transformer", "iiet", "pcformer"])
def test_init_scales(arch):
  """Projections and embeddings ~ N(0, 0.02); norm gains 1, biases 0."""
  cfg = small_config(arch=arch, d_model=128, d_ff=256, vocab_size=512,
                     num_layers=2, tie_embeddings=False)
  params = init_params(cfg, random_tokens(cfg, 1, 4), perturb=False)
  seen = set()
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    x = np.asarray(x)
    leaf = name.rsplit("/", 1)[-1]
    if leaf in ("scale", "rk_scale"):
      np.testing.assert_array_equal(x, 1.0, err_msg=name)
    elif leaf in ("bias", "rk_bias"):
      np.testing.assert_array_equal(x, 0.0, err_msg=name)
    elif leaf in ("weight", "weight_c", "alpha"):
      continue  # checked above
    else:
      seen.add(leaf)
      assert abs(x.mean()) < 0.002, name
      assert abs(x.std() - 0.02) < 0.001, (name, x.std())
  assert {"embedding", "head", "query", "key", "value", "out", "gate", "up",
          "down"} <= seen


def test_layers_get_independent_init():
  """Scanned layers split the RNG: layer 0 and 1 weights differ."""
  cfg = small_config(arch="iiet")
  params = init_params(cfg, random_tokens(cfg, 1, 4), perturb=False)
  q = params["decoder"]["stack"]["layers"]["layer"]["block"]["attention"]["query"]
  assert q.shape[0] == cfg.num_layers
  assert not np.allclose(q[0], q[1])


def test_logical_axes_on_every_parameter():
  cfg = small_config(arch="pcformer", tie_embeddings=False)
  boxed = jax.eval_shape(build_model(cfg).init, jax.random.key(0),
                         random_tokens(cfg, 1, 4))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(
      x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  specs = {tuple(x.names) for x in leaves}
  assert ("layers", "embed", "heads_query", "kv") in specs
  assert ("layers", "embed", "heads_key", "kv") in specs
  assert ("layers", "heads_out", "kv", "embed") in specs
  assert ("layers", "mlp_down", "embed") in specs
  assert ("layers", "embed", "mlp_gate") in specs
  assert ("vocab_embedding", "embed") in specs
  assert ("embed", "vocab_head") in specs
  for x in leaves:
    assert len(x.names) == x.value.ndim
