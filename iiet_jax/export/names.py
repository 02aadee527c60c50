"""Our parameter tree <-> the Hugging Face names of SPEC.md section 6.

`to_hf` turns the Flax parameters (layers scanned on a leading axis or
unrolled as `layers_{i}`) into a flat {name: array} with PyTorch's [out, in]
Linear layout; `from_hf` is its inverse for a given ModelConfig. `hf_config`
and `model_config` do the same for config.json. RoPE needs no permutation:
both sides use the rotate-half layout (models/layers.py `apply_rope`).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from iiet_jax.models import ModelConfig, build_model
from iiet_jax.errors import UserError

# Per layer: (HF name under model.layers.{i}. or model.history., our path
# under the layer core, our -> HF, HF -> ours given (D, N, H, F)).
_T = lambda a: a.T
LAYER = [
    ("self_attn.q_proj.weight", ("block", "attention", "query"),
     lambda a: a.reshape(a.shape[0], -1).T,
     lambda a, D, N, H, F: a.T.reshape(D, N, H)),
    ("self_attn.k_proj.weight", ("block", "attention", "key"),
     lambda a: a.reshape(a.shape[0], -1).T,
     lambda a, D, N, H, F: a.T.reshape(D, N, H)),
    ("self_attn.v_proj.weight", ("block", "attention", "value"),
     lambda a: a.reshape(a.shape[0], -1).T,
     lambda a, D, N, H, F: a.T.reshape(D, N, H)),
    ("self_attn.o_proj.weight", ("block", "attention", "out"),
     lambda a: a.reshape(-1, a.shape[-1]).T,
     lambda a, D, N, H, F: a.T.reshape(N, H, D)),
    ("mlp.gate_proj.weight", ("block", "mlp", "gate"), _T,
     lambda a, *_: a.T),
    ("mlp.up_proj.weight", ("block", "mlp", "up"), _T, lambda a, *_: a.T),
    ("mlp.down_proj.weight", ("block", "mlp", "down"), _T,
     lambda a, *_: a.T),
    ("input_layernorm.weight", ("block", "attention_norm", "scale"),
     lambda a: a, lambda a, *_: a),
    ("post_attention_layernorm.weight", ("block", "mlp_norm", "scale"),
     lambda a: a, lambda a, *_: a),
]
HISTORY_NORMS = [("rouge_predictions_norm", "predictor_norm"),
                 ("layer_norms", "corrector_norm")]


class ExportError(UserError, ValueError):
  """A model or folder the export format cannot carry."""

  kind = "Export"


def _flatten(tree, prefix=()) -> dict[tuple, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def _unflatten(flat: dict[tuple, Any]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def _layer_getter(flat, cfg: ModelConfig) -> Callable[[int, tuple], Any]:
  if cfg.scan_layers:
    return lambda i, p: flat[("decoder", "stack", "layers", "layer") + p][i]
  return lambda i, p: flat[("decoder", "stack", f"layers_{i}", "layer") + p]


def to_hf(params, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """Flax parameters (any float dtype, on host) -> HF state dict."""
  flat = {k: np.asarray(v) for k, v in _flatten(dict(params)).items()}
  layer = _layer_getter(flat, cfg)
  out = {"model.embed_tokens.weight": flat[("embedding",)],
         "model.norm.weight": flat[("final_norm", "scale")]}
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = flat[("head",)].T
  for i in range(cfg.num_layers):
    for hf, path, fwd, _ in LAYER:
      out[f"model.layers.{i}.{hf}"] = fwd(layer(i, path))
    if cfg.arch != "transformer":
      for hf, ours in HISTORY_NORMS:
        out[f"model.history.{hf}.{i}.weight"] = layer(i, (ours, "scale"))
        out[f"model.history.{hf}.{i}.bias"] = layer(i, (ours, "bias"))
  if cfg.arch != "transformer":
    out["model.history.weight"] = flat[("decoder", "history", "weight")]
    out["model.history.weight_c"] = flat[("decoder", "history", "weight_c")]
  if cfg.arch == "pcformer":
    out["model.alpha"] = flat[("decoder", "alpha")]
    for j in range(cfg.pc_order):
      out[f"model.RK_norm.{j}.weight"] = flat[("decoder", "rk_scale")][j]
      out[f"model.RK_norm.{j}.bias"] = flat[("decoder", "rk_bias")][j]
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Every HF name of `cfg` with its shape (SPEC.md section 6)."""
  abstract = jax.eval_shape(
      lambda: build_model(cfg).init(jax.random.key(0),
                                    jnp.zeros((1, 1), jnp.int32)))
  params = nn.unbox(abstract)["params"]
  shapes = to_hf(jax.tree.map(lambda a: np.zeros(a.shape, np.int8), params),
                 cfg)
  return {k: tuple(v.shape) for k, v in shapes.items()}


def from_hf(tensors: dict[str, np.ndarray], cfg: ModelConfig) -> dict:
  """HF state dict -> Flax parameters (float32) laid out for `cfg`."""
  want = expected_shapes(cfg)
  have = {k for k in tensors if not (k == "lm_head.weight" and
                                     cfg.tie_embeddings)}
  missing, extra = sorted(set(want) - have), sorted(have - set(want))
  bad = [f"{k}: {tuple(tensors[k].shape)} != {want[k]}" for k in want
         if k in tensors and tuple(tensors[k].shape) != want[k]]
  if missing or extra or bad:
    raise ExportError(
        "model.safetensors does not match config.json: " + "; ".join(
            part for part in (
                missing and f"missing {missing[:6]}"
                f"{'...' if len(missing) > 6 else ''}",
                extra and f"unexpected {extra[:6]}"
                f"{'...' if len(extra) > 6 else ''}",
                bad and f"shapes {bad[:6]}") if part))
  t = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
  D, N, F = cfg.d_model, cfg.num_heads, cfg.d_ff
  H = cfg.head_dim
  flat = {("embedding",): t["model.embed_tokens.weight"],
          ("final_norm", "scale"): t["model.norm.weight"]}
  if not cfg.tie_embeddings:
    flat[("head",)] = t["lm_head.weight"].T
  per_layer: dict[tuple, list] = {}
  for i in range(cfg.num_layers):
    for hf, path, _, inv in LAYER:
      per_layer.setdefault(path, []).append(
          inv(t[f"model.layers.{i}.{hf}"], D, N, H, F))
    if cfg.arch != "transformer":
      for hf, ours in HISTORY_NORMS:
        per_layer.setdefault((ours, "scale"), []).append(
            t[f"model.history.{hf}.{i}.weight"])
        per_layer.setdefault((ours, "bias"), []).append(
            t[f"model.history.{hf}.{i}.bias"])
  for path, arrays in per_layer.items():
    if cfg.scan_layers:
      flat[("decoder", "stack", "layers", "layer") + path] = np.stack(arrays)
    else:
      for i, a in enumerate(arrays):
        flat[("decoder", "stack", f"layers_{i}", "layer") + path] = a
  if cfg.arch != "transformer":
    flat[("decoder", "history", "weight")] = t["model.history.weight"]
    flat[("decoder", "history", "weight_c")] = t["model.history.weight_c"]
  if cfg.arch == "pcformer":
    flat[("decoder", "alpha")] = t["model.alpha"]
    flat[("decoder", "rk_scale")] = np.stack(
        [t[f"model.RK_norm.{j}.weight"] for j in range(cfg.pc_order)])
    flat[("decoder", "rk_bias")] = np.stack(
        [t[f"model.RK_norm.{j}.bias"] for j in range(cfg.pc_order)])
  return _unflatten(flat)


def hf_config(cfg: ModelConfig, bos_id: int = 1, eos_id: int = 2,
              pad_id: int = 0, dtype: str = "float32") -> dict[str, Any]:
  """config.json: Llama fields, plus the IIET / PCformer ones and auto_map."""
  out = {
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
      "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_heads, "head_dim": cfg.head_dim,
      "hidden_act": "silu", "rms_norm_eps": cfg.rms_eps,
      "rope_theta": cfg.rope_base,
      "rope_parameters": {"rope_type": "default",
                          "rope_theta": cfg.rope_base},
      "max_position_embeddings": cfg.max_seq_len,
      "tie_word_embeddings": cfg.tie_embeddings,
      "initializer_range": cfg.init_std, "attention_bias": False,
      "mlp_bias": False, "bos_token_id": bos_id, "eos_token_id": eos_id,
      "pad_token_id": pad_id, "dtype": dtype, "use_cache": False,
  }
  if cfg.arch == "transformer":
    out.update(architectures=["LlamaForCausalLM"], model_type="llama",
               use_cache=True)
    return out
  out.update(
      architectures=["IIETForCausalLM"], model_type="iiet",
      auto_map={"AutoConfig": "configuration_iiet.IIETConfig",
                "AutoModelForCausalLM": "modeling_iiet.IIETForCausalLM"},
      iiet_arch=cfg.arch, iterations=list(cfg.iterations),
      pc_order=cfg.pc_order, layer_norm_eps=cfg.ln_eps)
  return out


def model_config(hf: dict[str, Any]) -> dict[str, Any]:
  """config.json -> the `model` block of our config (inverse of hf_config)."""
  kind = hf.get("model_type")
  if kind not in ("llama", "iiet"):
    raise ExportError(f"config.json has model_type={kind!r}; import reads "
                      f"'llama' (Transformer++) and 'iiet' (IIET, PCformer).")
  heads = hf["num_attention_heads"]
  if hf.get("num_key_value_heads", heads) != heads:
    raise ExportError(f"num_key_value_heads={hf['num_key_value_heads']} != "
                      f"num_attention_heads={heads}: our models use full "
                      f"multi-head attention, not grouped queries.")
  rope = hf.get("rope_parameters") or {}
  if rope.get("rope_type", "default") != "default":
    raise ExportError(f"rope_parameters={rope}: only plain RoPE "
                      f"(rope_type 'default') is supported.")
  head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
  if head_dim * heads != hf["hidden_size"]:
    raise ExportError(f"head_dim={head_dim} x {heads} heads != "
                      f"hidden_size={hf['hidden_size']}.")
  for flag in ("attention_bias", "mlp_bias"):
    if hf.get(flag):
      raise ExportError(f"{flag}=true: our blocks have no biases.")
  out = dict(
      arch=hf.get("iiet_arch", "transformer") if kind == "iiet"
      else "transformer",
      vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
      d_model=hf["hidden_size"], num_heads=heads,
      d_ff=hf["intermediate_size"],
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_seq_len=hf.get("max_position_embeddings", 2048),
      rope_base=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
      rms_eps=hf.get("rms_norm_eps", 1e-6),
      init_std=hf.get("initializer_range", 0.02))
  if kind == "iiet":
    out.update(iterations=tuple(hf["iterations"]),
               pc_order=hf.get("pc_order", 2),
               ln_eps=hf.get("layer_norm_eps", 1e-5))
  return out
