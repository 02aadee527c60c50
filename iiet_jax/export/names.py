"""Our parameter tree <-> the Hugging Face names of SPEC.md section 6.

`to_hf` turns the Flax parameters (layers scanned on a leading axis or
unrolled as `layers_{i}`) into a flat {name: array} with PyTorch's [out, in]
Linear layout; `from_hf` is its inverse for a given ModelConfig, reading
tensors lazily and placing them into their shardings. `hf_config`
and `model_config` do the same for config.json. RoPE needs no permutation:
both sides use the rotate-half layout (models/layers.py `apply_rope`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from iiet_jax.export.lazy import Arrays, TensorSource, host, placed
from iiet_jax.models import ModelConfig, build_model, registry
from iiet_jax.models.config import ROPE_TYPES
from iiet_jax.errors import UserError

# Per layer: (HF name under model.layers.{i}. or model.history., our path
# under the layer core, our -> HF, HF -> ours given (D, N, H, F)). k_proj /
# v_proj are [K * H, D] for K kv heads (grouped queries): HF -> ours reads K
# off the tensor, whose shape is checked against the config before.
_T = lambda a: a.T
LAYER = [
    ("self_attn.q_proj.weight", ("block", "attention", "query"),
     lambda a: a.reshape(a.shape[0], -1).T,
     lambda a, D, N, H, F: a.T.reshape(D, N, H)),
    ("self_attn.k_proj.weight", ("block", "attention", "key"),
     lambda a: a.reshape(a.shape[0], -1).T,
     lambda a, D, N, H, F: a.T.reshape(D, -1, H)),
    ("self_attn.v_proj.weight", ("block", "attention", "value"),
     lambda a: a.reshape(a.shape[0], -1).T,
     lambda a, D, N, H, F: a.T.reshape(D, -1, H)),
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
# The history / extra names of IIET and PCformer are in their registry
# records (hf_layer_params, hf_model_params).


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
  views = _hf_views(params, cfg)
  return {k: np.ascontiguousarray(v) for k, v in views.items()}


def _hf_views(params, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """to_hf's names and layouts, as views of the parameters where possible."""
  flat = {k: np.asarray(v) for k, v in _flatten(dict(params)).items()}
  layer = _layer_getter(flat, cfg)
  arch = registry.get(cfg.arch)
  out = {"model.embed_tokens.weight": flat[("embedding",)],
         "model.norm.weight": flat[("final_norm", "scale")]}
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = flat[("head",)].T
  for i in range(cfg.num_layers):
    for hf, path, fwd, _ in LAYER:
      out[f"model.layers.{i}.{hf}"] = fwd(layer(i, path))
    for hf, path in arch.hf_layer_params:
      out[hf.format(i=i)] = layer(i, path)
  for hf, path in arch.hf_model_params:
    leaf = flat[("decoder",) + path]
    if "{j}" in hf:  # one HF tensor per row of our stacked leaf
      out.update((hf.format(j=j), row) for j, row in enumerate(leaf))
    else:
      out[hf] = leaf
  return out


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Every HF name of `cfg` with its shape (SPEC.md section 6)."""
  abstract = jax.eval_shape(
      lambda: build_model(cfg).init(jax.random.key(0),
                                    jnp.zeros((1, 1), jnp.int32)))
  params = nn.unbox(abstract)["params"]
  # Zero-stride views: the layout transforms run without allocating.
  views = _hf_views(jax.tree.map(
      lambda a: np.broadcast_to(np.int8(0), a.shape), params), cfg)
  return {k: tuple(v.shape) for k, v in views.items()}


def _check_names(source: TensorSource, cfg: ModelConfig) -> None:
  want, shapes = expected_shapes(cfg), source.shapes
  have = {k for k in shapes if not (k == "lm_head.weight" and
                                    cfg.tie_embeddings)}
  missing, extra = sorted(set(want) - have), sorted(have - set(want))
  bad = [f"{k} in {source.where(k)}: {shapes[k]} != {want[k]}" for k in want
         if k in shapes and tuple(shapes[k]) != want[k]]
  if missing or extra or bad:
    raise ExportError(
        "The checkpoint's tensors do not match config.json: " + "; ".join(
            part for part in (
                missing and f"missing {missing[:6]}"
                f"{'...' if len(missing) > 6 else ''}",
                extra and f"unexpected {extra[:6]}"
                f"{'...' if len(extra) > 6 else ''}",
                bad and f"shapes {bad[:6]}") if part))


# A leaf to read (iiet_jax/export/lazy.py): readers of its parts, stacked?
_Leaf = tuple[list[Callable[[], np.ndarray]], bool]


def _plan(source: TensorSource, cfg: ModelConfig) -> dict[tuple, _Leaf]:
  D, N, F = cfg.d_model, cfg.num_heads, cfg.d_ff
  H = cfg.head_dim

  arch = registry.get(cfg.arch)

  def read(name, fn=lambda a: a):
    return lambda: fn(source.get(name))

  flat = {("embedding",): ([read("model.embed_tokens.weight")], False),
          ("final_norm", "scale"): ([read("model.norm.weight")], False)}
  if not cfg.tie_embeddings:
    flat[("head",)] = ([read("lm_head.weight", _T)], False)
  per_layer: dict[tuple, list] = {}
  for i in range(cfg.num_layers):
    for hf, path, _, inv in LAYER:
      per_layer.setdefault(path, []).append(read(
          f"model.layers.{i}.{hf}", lambda a, inv=inv: inv(a, D, N, H, F)))
    for hf, path in arch.hf_layer_params:
      per_layer.setdefault(path, []).append(read(hf.format(i=i)))
  for path, readers in per_layer.items():
    if cfg.scan_layers:
      flat[("decoder", "stack", "layers", "layer") + path] = (readers, True)
    else:
      for i, r in enumerate(readers):
        flat[("decoder", "stack", f"layers_{i}", "layer") + path] = ([r],
                                                                     False)
  for hf, path in arch.hf_model_params:
    if "{j}" in hf:  # rows of one stacked leaf; _check_names saw them all
      rows = []
      while hf.format(j=len(rows)) in source.shapes:
        rows.append(read(hf.format(j=len(rows))))
      flat[("decoder",) + path] = (rows, True)
    else:
      flat[("decoder",) + path] = ([read(hf)], False)
  return flat


def from_hf(source: TensorSource | Mapping[str, Any], cfg: ModelConfig,
            abstract=None) -> dict:
  """HF tensors -> Flax parameters laid out for `cfg`, in cfg.weight_dtype.

  `source` is a {name: array} dict or a lazy TensorSource, read one tensor
  at a time. Without `abstract`, the leaves are NumPy arrays; with it (our
  parameter tree of ShapeDtypeStructs with shardings), each leaf is
  assembled shard by shard straight onto its devices. Names and shapes are
  all checked before any data is read.
  """
  if isinstance(source, Mapping):
    source = Arrays(source)
  _check_names(source, cfg)
  targets = _flatten(dict(abstract)) if abstract is not None else {}
  out = {}
  for path, (readers, stacked) in _plan(source, cfg).items():
    if abstract is None:
      whole = (slice(None),) if stacked else ()
      out[path] = host(readers, stacked, whole, cfg.weight_dtype)
    else:
      out[path] = placed(readers, stacked, targets[path])
  return _unflatten(out)


def hf_config(cfg: ModelConfig, bos_id: int = 1, eos_id: int = 2,
              pad_id: int = 0, dtype: str = "float32") -> dict[str, Any]:
  """config.json: Llama fields, plus the IIET / PCformer ones and auto_map."""
  out = {
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
      "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
      "hidden_act": "silu", "rms_norm_eps": cfg.rms_eps,
      "rope_theta": cfg.rope_base, "rope_parameters": _rope_parameters(cfg),
      "max_position_embeddings": cfg.max_seq_len,
      "tie_word_embeddings": cfg.tie_embeddings,
      "initializer_range": cfg.init_std, "attention_bias": False,
      "mlp_bias": False, "bos_token_id": bos_id, "eos_token_id": eos_id,
      "pad_token_id": pad_id, "dtype": dtype, "use_cache": False,
  }
  if cfg.rope_type != "default":
    # transformers 4.x (the authors' release) reads scaling from here.
    out["rope_scaling"] = _rope_parameters(cfg)
  arch = registry.get(cfg.arch)
  out.update(architectures=[arch.pytorch_class],
             model_type=arch.hf_model_type, use_cache=arch.hf_use_cache)
  if arch.remote_code:  # our twin's fields (pytorch/configuration_iiet.py)
    out.update(auto_map=dict(arch.hf_auto_map), iiet_arch=arch.name,
               iterations=list(cfg.iterations), pc_order=cfg.pc_order,
               layer_norm_eps=cfg.ln_eps)
  return out


def model_config(hf: dict[str, Any]) -> dict[str, Any]:
  """config.json -> the `model` block of our config (inverse of hf_config)."""
  try:
    arch = registry.from_hf(hf.get("model_type"), hf.get("iiet_arch"))
  except registry.ArchitectureError as err:
    raise ExportError(str(err)) from None
  heads = hf["num_attention_heads"]
  kv_heads = hf.get("num_key_value_heads") or heads
  if not isinstance(kv_heads, int) or kv_heads <= 0 or heads % kv_heads:
    raise ExportError(
        f"config.json has num_attention_heads={heads} and "
        f"num_key_value_heads={kv_heads}: grouped-query attention needs the "
        f"key / value heads to divide the query heads evenly. Fix "
        f"num_key_value_heads in config.json (the k_proj / v_proj rows are "
        f"num_key_value_heads x head_dim).")
  head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
  if head_dim * heads != hf["hidden_size"]:
    raise ExportError(f"head_dim={head_dim} x {heads} heads != "
                      f"hidden_size={hf['hidden_size']}.")
  for flag in ("attention_bias", "mlp_bias"):
    if hf.get(flag):
      raise ExportError(f"{flag}=true: our blocks have no biases.")
  out = dict(
      arch=arch.name,
      vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
      d_model=hf["hidden_size"], num_heads=heads, num_kv_heads=kv_heads,
      d_ff=hf["intermediate_size"],
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_seq_len=hf.get("max_position_embeddings", 2048),
      **_rope_fields(hf),
      rms_eps=hf.get("rms_norm_eps", 1e-6),
      init_std=hf.get("initializer_range", 0.02))
  if arch.remote_code:
    out.update(iterations=tuple(hf["iterations"]),
               pc_order=hf.get("pc_order", 2),
               ln_eps=hf.get("layer_norm_eps", 1e-5))
  return out


def _rope_parameters(cfg: ModelConfig) -> dict[str, Any]:
  """config.json's `rope_parameters` (the transformers 5 name)."""
  out = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_base}
  if cfg.rope_type == "llama3":
    out.update(factor=cfg.rope_factor,
               low_freq_factor=cfg.rope_low_freq_factor,
               high_freq_factor=cfg.rope_high_freq_factor,
               original_max_position_embeddings=(
                   cfg.rope_original_max_positions))
  return out


def _rope_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """Our rope_* model fields from config.json, read as transformers does:
  `rope_parameters` (transformers 5), else `rope_scaling` beside
  `rope_theta` (4.x, most published Llama checkpoints)."""
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  kind = rope.get("rope_type", rope.get("type", "default"))
  if kind not in ROPE_TYPES:
    raise ExportError(
        f"config.json has RoPE scaling of type {kind!r} ({rope}); supported "
        f"RoPE types: {', '.join(repr(t) for t in ROPE_TYPES)}.")
  out = dict(rope_type=kind, rope_base=float(
      rope.get("rope_theta") or hf.get("rope_theta") or 10000.0))
  if kind == "llama3":
    missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor")
               if rope.get(k) is None]
    if missing:
      raise ExportError(f"config.json's llama3 RoPE parameters {rope} lack "
                        f"{missing}; add them (Llama 3.1: factor 8.0, "
                        f"low_freq_factor 1.0, high_freq_factor 4.0).")
    # transformers prefers a top-level original_max_position_embeddings.
    original = (hf.get("original_max_position_embeddings")
                or rope.get("original_max_position_embeddings")
                or hf.get("max_position_embeddings", 2048))
    out.update(rope_factor=float(rope["factor"]),
               rope_low_freq_factor=float(rope["low_freq_factor"]),
               rope_high_freq_factor=float(rope["high_freq_factor"]),
               rope_original_max_positions=int(original))
  return out
