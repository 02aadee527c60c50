"""Switch-time initialisation of the history (two-stage IIET, SPEC.md 5).

At the Transformer++ -> IIET switch the history parameters are new. Their
SPEC init (W, Wc plain averages of all earlier states, LayerNorms with unit
gain and zero bias) turns the inherited network into a different function:
on the tiny config the training loss jumps from about 4.3 to 7.4 and IIET
spends its short phase recovering. Two independent choices, both config
options under `switch`:

`history_init`
  average   SPEC.md's init: row t of W and Wc is 1/(t+1) on columns 0..t.
  inherit   Wc[t, t] = 1 and W[t, t-1] = 1, everything else 0: the layer
            output is the newest state, h_t = S_t, and every implicit
            iteration re-evaluates B_t at h_{t-1}, i.e. returns the explicit
            step again. The iterations start as a fixed point of the
            inherited Transformer++ and training moves W away from it.
            PCformer also starts with alpha = 0, so its RK2 predictor is
            P = h_{t-1}.

`norm_init`
  unit      LNp_t / LNc_t at gain 1, bias 0 (SPEC.md).
  fit       gain and bias fitted so that LN(x) ~= x on the inherited
            residual stream: per feature d, the least-squares line of x_d on
            LN_1,0(x)_d over the next `fit_batches` training batches
            (peeked, not consumed), g_d = cov(n_d, x_d) / var(n_d),
            b_d = mean(x_d) - g_d mean(n_d). IIET fits LNp_t and LNc_t on
            h_t (both normalise B_t's output); PCformer fits LNp_t on
            h_{t-1} (its predictor input with alpha = 0) and LNc_t on h_t.
            Only per-feature sums over tokens leave the device.

With both `inherit` and `fit` the switched model equals the Transformer++ up
to how far LN(x) is from x per token (the residual norm varies by token);
the measured jumps of every combination are in docs/reproduction.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from iiet_jax.models import registry
from iiet_jax.models.layers import layer_norm
from iiet_jax.train import loss as loss_lib
from iiet_jax.train.merge import leaf_paths
from iiet_jax.errors import UserError

HISTORY_INITS = ("average", "inherit")
NORM_INITS = ("unit", "fit")


@dataclasses.dataclass(frozen=True)
class SwitchInit:
  """The fields of a config's `switch` block that `initialise` reads."""
  history_init: str = "inherit"
  norm_init: str = "unit"


class SwitchInitError(UserError, ValueError):
  """A switch initialisation that the configured model cannot take."""

  kind = "Config"


def check(switch_cfg) -> None:
  """Validates the `switch` block of a config (before anything runs)."""
  if switch_cfg.history_init not in HISTORY_INITS:
    raise SwitchInitError(
        f"switch.history_init={switch_cfg.history_init!r}; choose one of "
        f"{', '.join(HISTORY_INITS)}.")
  if switch_cfg.norm_init not in NORM_INITS:
    raise SwitchInitError(
        f"switch.norm_init={switch_cfg.norm_init!r}; choose one of "
        f"{', '.join(NORM_INITS)}.")
  if switch_cfg.norm_init == "fit" and switch_cfg.fit_batches < 1:
    raise SwitchInitError(
        f"switch.fit_batches={switch_cfg.fit_batches} must be >= 1 with "
        f"switch.norm_init='fit'.")
  scale = switch_cfg.get("history_lr_scale", 1.0)
  if not scale > 0:
    raise SwitchInitError(
        f"switch.history_lr_scale={scale} must be > 0 (1 keeps the "
        f"optimizer's learning rate for the new parameters).")


def residual_states(intermediates) -> list[jax.Array]:
  """Transformer++ layer outputs h_1..h_L (sown as `output`) in layer order,
  from a scanned ([L, B, T, D]) or an unrolled stack."""
  flat = leaf_paths(intermediates)
  scanned = [v for k, v in flat.items() if k.endswith("stack/layers/layer/"
                                                      "output/0")]
  if scanned:
    return list(scanned[0])
  by_layer = {}
  for k, v in flat.items():
    parts = k.split("/")
    if parts[-2] == "output" and "stack" in parts:
      name = parts[parts.index("stack") + 1]
      by_layer[int(name.removeprefix("layers_"))] = v
  if not by_layer:
    raise SwitchInitError("the Transformer++ sowed no layer outputs")
  return [by_layer[i] for i in sorted(by_layer)]


def norm_sums(states: list[jax.Array], weights_BT: jax.Array,
              eps: float) -> dict[str, jax.Array]:
  """Per-state, per-feature token sums for the least-squares fit: [S, D]
  each for x, n, n*x, n*n (n = LN_1,0(x)) and the token count []."""
  w = weights_BT.astype(jnp.float32)[..., None]
  out = {"x": [], "n": [], "nx": [], "nn": []}
  for x in states:
    x = x.astype(jnp.float32)
    d = x.shape[-1]
    n = layer_norm(x, jnp.ones((d,)), jnp.zeros((d,)), eps)
    for key, value in (("x", x), ("n", n), ("nx", n * x), ("nn", n * n)):
      out[key].append(jnp.sum(w * value, axis=(0, 1)))
  sums = {k: jnp.stack(v) for k, v in out.items()}
  sums["count"] = jnp.sum(w)
  return sums


def fit_norms(sums: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """(gain, bias) [S, D] of the least-squares line x ~= g * n + b."""
  count = max(float(sums["count"]), 1.0)
  mean_x = np.asarray(sums["x"], np.float64) / count
  mean_n = np.asarray(sums["n"], np.float64) / count
  cov = np.asarray(sums["nx"], np.float64) / count - mean_n * mean_x
  var = np.asarray(sums["nn"], np.float64) / count - mean_n ** 2
  gain = cov / np.maximum(var, 1e-12)
  return gain, mean_x - gain * mean_n


def history_matrices(num_layers: int) -> tuple[np.ndarray, np.ndarray]:
  """`inherit`'s (W, Wc): W[t, t-1] = 1 (row 0: W[0, 0] = 1), Wc = I."""
  n = num_layers + 1
  w = np.zeros((n, n), np.float32)
  w[0, 0] = 1.0
  w[np.arange(1, n), np.arange(0, n - 1)] = 1.0
  return w, np.eye(n, dtype=np.float32)


def _set(params, values: dict[str, Any]):
  """`params` with the leaves at the given paths replaced (same sharding,
  dtype and shape)."""
  paths = leaf_paths(params)
  missing = [p for p in values if p not in paths]
  if missing:
    raise SwitchInitError(f"no parameters at {missing}")

  def pick(path_keys, leaf):
    path = "/".join(str(getattr(k, "key", k)) for k in path_keys)
    if path not in values:
      return leaf
    new = jnp.asarray(values[path], leaf.dtype).reshape(leaf.shape)
    sharding = getattr(leaf, "sharding", None)
    return new if sharding is None else jax.device_put(new, sharding)

  return jax.tree_util.tree_map_with_path(pick, params)


def _layer_prefixes(params, num_layers: int) -> list[str] | str:
  paths = leaf_paths(params)
  if any(p.startswith("decoder/stack/layers/") for p in paths):
    return "decoder/stack/layers/layer"
  return [f"decoder/stack/layers_{i}/layer" for i in range(num_layers)]


def initialise(params, arch: str, num_layers: int, switch_cfg,
               sums: dict[str, np.ndarray] | None = None):
  """The switched parameters with the configured history / norm init.

  `sums` (from `norm_sums` over [h_0, h_1, ..., h_L], accumulated over the
  fit batches) is needed for `norm_init='fit'`. Returns (params, report)."""
  record = registry.get(arch)
  values: dict[str, Any] = {}
  report = {"history_init": switch_cfg.history_init,
            "norm_init": switch_cfg.norm_init}
  if switch_cfg.history_init == "inherit":
    w, wc = history_matrices(num_layers)
    values["decoder/history/weight"] = w
    values["decoder/history/weight_c"] = wc
    values.update(record.switch_inherit)
  if switch_cfg.norm_init == "fit":
    if sums is None:
      raise SwitchInitError("norm_init='fit' needs the residual-stream sums")
    gain, bias = fit_norms(sums)            # rows: h_0, h_1, ..., h_L
    pred = (slice(0, num_layers) if record.predictor_norm_on_input
            else slice(1, None))
    layers = _layer_prefixes(params, num_layers)
    for norm, rows in (("predictor_norm", pred),
                       ("corrector_norm", slice(1, None))):
      g, b = gain[rows], bias[rows]
      if isinstance(layers, str):
        values[f"{layers}/{norm}/scale"] = g
        values[f"{layers}/{norm}/bias"] = b
      else:
        for i, prefix in enumerate(layers):
          values[f"{prefix}/{norm}/scale"] = g[i]
          values[f"{prefix}/{norm}/bias"] = b[i]
    report["fit_tokens"] = int(sums["count"])
    report["fit_gain_mean"] = float(np.mean(gain[1:]))
  return _set(params, values), report


def accumulate(fn, batches: Iterable) -> dict[str, np.ndarray]:
  """Sums `fn(batch)` (a dict of arrays) over `batches`, on the host."""
  total = None
  for batch in batches:
    part = jax.tree.map(np.asarray, jax.device_get(fn(batch)))
    total = part if total is None else jax.tree.map(np.add, total, part)
  return total


def sums_fn(model, eps: float):
  """(params, batch) -> `norm_sums` over [h_0 = Embed(x), h_1, ..., h_L] of
  the Transformer++ `model` on the batch's real tokens."""
  def fn(params, batch):
    tokens = batch["tokens"]
    h0 = model.apply({"params": params}, tokens, method="embed")
    _, extra = loss_lib.forward(model, params, batch,
                                mutable=["intermediates"])
    states = [h0] + residual_states(extra["intermediates"])
    weights = jnp.ones(tokens.shape, jnp.float32)
    if batch.get("segment_ids") is not None:
      weights = weights * (batch["segment_ids"] > 0)
    if batch.get("mask") is not None:
      weights = weights * batch["mask"]
    return norm_sums(states, weights, eps)
  return fn
