"""The static description of a model, validated once when it is built.

`ModelConfig` is a frozen dataclass (hashable, so Flax modules can hold it as a
static attribute). `ModelConfig.from_dict` turns the `model` block of an
ml_collections config into one and rejects anything the modules could not run,
with a message that names the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

import jax.numpy as jnp

from iiet_jax.errors import UserError
from iiet_jax.models import registry

ARCHITECTURES = registry.NAMES
# "per_evaluation": as "full" across the stack, and inside a recomputed layer
# each block evaluation rematerialised on its own (IIET / PCformer; for
# Transformer++ the same as full).
REMAT_POLICIES = ("none", "full", "save_dots", "save_names", "per_evaluation")
ATTENTION_IMPLS = ("xla", "cudnn", "splash", "auto")
DTYPES = ("float32", "bfloat16", "float16")
# RoPE frequency schedules, as transformers names them (`rope_type`).
ROPE_TYPES = ("default", "llama3")
PC_ORDERS = (2, 4)

# The fields that fix the parameter tree: a checkpoint restores only onto a
# model with the same values (checkpoint.check_compatible); the others
# (compute dtype, remat, attention kernel, ...) may differ.
TREE_FIELDS = ("arch", "vocab_size", "num_layers", "d_model", "num_heads",
               "num_kv_heads", "d_ff", "tie_embeddings", "iterations",
               "pc_order", "scan_layers", "param_dtype")
# The fields a model's weights fix whatever the architecture that reads
# them: the shape, positions (RoPE) and norms. `init=DIR` takes these from
# DIR's checkpoint (configs/lm.py).
WEIGHT_FIELDS = ("vocab_size", "num_layers", "d_model", "num_heads",
                 "num_kv_heads", "d_ff", "tie_embeddings", "max_seq_len",
                 "rope_base", "rope_type", "rope_factor",
                 "rope_low_freq_factor", "rope_high_freq_factor",
                 "rope_original_max_positions", "rms_eps", "init_std")
# `checkpoint_name` tags in the model; `remat_policy="save_names"` keeps the
# ones listed in `remat_save_names` and recomputes the rest.
CHECKPOINT_NAMES = ("query_proj", "key_proj", "value_proj", "attention_out",
                    "mlp_gate", "mlp_up", "block_out")


class ConfigError(UserError, ValueError):
  """A model configuration that cannot be built."""

  kind = "Config"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Every field the model modules read. SPEC.md section 7 gives the sizes."""

  arch: str = "iiet"
  vocab_size: int = 32000
  num_layers: int = 12
  d_model: int = 512
  num_heads: int = 4
  # Key / value heads (grouped-query attention); None: one per query head.
  # Query head n reads kv head n // (num_heads // num_kv_heads), as in Llama.
  num_kv_heads: int | None = None
  d_ff: int = 1408
  tie_embeddings: bool = True
  max_seq_len: int = 2048
  rope_base: float = 10000.0
  # "default": frequencies rope_base^(-2i/H). "llama3": Llama 3.1's schedule
  # (transformers' `_compute_llama3_parameters`), which reads the four fields
  # below; they are ignored for "default".
  rope_type: str = "default"
  rope_factor: float = 8.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_positions: int = 8192
  rms_eps: float = 1e-6
  ln_eps: float = 1e-5
  init_std: float = 0.02
  # IIET: implicit iterations per layer, one int for all layers or one per layer.
  iterations: int | tuple[int, ...] = 3
  # Unroll the iteration loop (`nn.scan(unroll=...)`): XLA then fuses across
  # iterations; measured 1.36x -> 1.06x of an equal-NFE Transformer++ step
  # (bench/train_throughput.py, tiny, CPU). The loop form compiles faster.
  unroll_iterations: bool = True
  # PCformer: Runge-Kutta order of the predictor and the EMA coefficient init.
  pc_order: int = 2
  pc_alpha_init: float = 0.5
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  scan_layers: bool = True
  remat_policy: str = "full"
  remat_save_names: tuple[str, ...] = ()
  # xla | cudnn (GPU) | splash (TPU; Pallas interpret mode on CPU) | auto
  # (splash on TPU, else JAX's pick); see models/attention.py.
  attention_impl: str = "xla"

  def __post_init__(self):
    if self.num_kv_heads is None:
      object.__setattr__(self, "num_kv_heads", self.num_heads)
    self._validate()
    iters = self.iterations
    if isinstance(iters, int):
      iters = (iters,) * self.num_layers
    object.__setattr__(self, "iterations", tuple(int(r) for r in iters))
    object.__setattr__(self, "remat_save_names", tuple(self.remat_save_names))

  # --- derived values ------------------------------------------------------
  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def query_groups(self) -> int:
    """Query heads per key / value head."""
    return self.num_heads // self.num_kv_heads

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @property
  def max_iterations(self) -> int:
    return max(self.iterations, default=0)

  @property
  def uniform_iterations(self) -> bool:
    return len(set(self.iterations)) <= 1

  def block_evaluations_per_layer(self) -> tuple[int, ...]:
    """NFE of each layer: how many times B_t runs (SPEC sections 2-4)."""
    return tuple(registry.get(self.arch).block_evaluations(self))

  # --- construction --------------------------------------------------------
  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
    """Builds from a mapping (e.g. `config.model`), rejecting unknown keys."""
    names = [f.name for f in dataclasses.fields(cls)]
    values = dict(values)
    for key in values:
      if key not in names:
        close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"Unknown model config key 'model.{key}'.{hint} "
            f"Valid keys: {', '.join(names)}.")
    if isinstance(values.get("iterations"), list):
      values["iterations"] = tuple(values["iterations"])
    if isinstance(values.get("remat_save_names"), list):
      values["remat_save_names"] = tuple(values["remat_save_names"])
    return cls(**values)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def _validate(self):
    def fail(msg):
      raise ConfigError(msg)

    if self.arch not in ARCHITECTURES:
      fail(registry.unknown_message(self.arch))
    for key in ("vocab_size", "num_layers", "d_model", "num_heads",
                "num_kv_heads", "d_ff", "max_seq_len"):
      value = getattr(self, key)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        fail(f"model.{key}={value!r} must be a positive integer.")
    if self.d_model % self.num_heads:
      divisors = [h for h in range(1, min(self.d_model, 64) + 1)
                  if self.d_model % h == 0 and (self.d_model // h) % 2 == 0]
      fail(f"model.d_model={self.d_model} is not divisible by "
           f"model.num_heads={self.num_heads}; set num_heads to a divisor of "
           f"d_model, e.g. one of {divisors[-6:]}.")
    if self.head_dim % 2:
      fail(f"head size d_model/num_heads={self.head_dim} is odd, but RoPE "
           f"rotates pairs of features; pick num_heads so that "
           f"{self.d_model}/num_heads is even.")
    if self.num_heads % self.num_kv_heads:
      divisors = [k for k in range(1, self.num_heads + 1)
                  if self.num_heads % k == 0]
      fail(f"model.num_heads={self.num_heads} is not divisible by "
           f"model.num_kv_heads={self.num_kv_heads}: every key / value head "
           f"serves the same number of query heads. Set num_kv_heads to one "
           f"of {divisors}.")
    self._validate_rope(fail)
    iters = self.iterations
    if isinstance(iters, bool) or not isinstance(iters, (int, tuple)):
      fail(f"model.iterations={iters!r} must be an int or a tuple of "
           f"{self.num_layers} ints (one per layer).")
    if isinstance(iters, tuple):
      if len(iters) != self.num_layers:
        fail(f"model.iterations has {len(iters)} entries {iters} but the model "
             f"has num_layers={self.num_layers}; give exactly one count per "
             f"layer, or a single int for all layers.")
      bad = [r for r in iters if not isinstance(r, int) or isinstance(r, bool)]
      if bad:
        fail(f"model.iterations={iters} holds non-integers {bad}.")
    counts = iters if isinstance(iters, tuple) else (iters,)
    negative = [(i, r) for i, r in enumerate(counts) if r < 0]
    if negative:
      where = ", ".join(f"layer {i}: {r}" for i, r in negative)
      fail(f"model.iterations must be >= 0 (0 keeps only the predictor); got "
           f"{where}.")
    if self.pc_order not in PC_ORDERS:
      fail(f"model.pc_order={self.pc_order!r} is not supported; choose one of "
           f"{PC_ORDERS}.")
    for key, allowed in (("remat_policy", REMAT_POLICIES),
                         ("attention_impl", ATTENTION_IMPLS),
                         ("dtype", DTYPES), ("param_dtype", DTYPES)):
      value = getattr(self, key)
      if value not in allowed:
        fail(f"model.{key}={value!r} is not one of {', '.join(allowed)}.")
    if self.remat_policy == "save_names" and not self.remat_save_names:
      fail("model.remat_policy='save_names' needs model.remat_save_names, "
           "e.g. ('query_proj', 'key_proj', 'value_proj'); valid tags: "
           f"{', '.join(CHECKPOINT_NAMES)}.")
    unknown = [n for n in self.remat_save_names if n not in CHECKPOINT_NAMES]
    if unknown:
      fail(f"model.remat_save_names has unknown tags {unknown}; valid tags: "
           f"{', '.join(CHECKPOINT_NAMES)}.")

  def _validate_rope(self, fail):
    if self.rope_type not in ROPE_TYPES:
      fail(f"model.rope_type={self.rope_type!r} is not supported; supported "
           f"RoPE types: {', '.join(repr(t) for t in ROPE_TYPES)}.")
    if self.rope_type != "llama3":
      return
    if not self.rope_factor >= 1.0:
      fail(f"model.rope_factor={self.rope_factor!r} must be >= 1 (llama3 "
           f"RoPE divides the low frequencies by it).")
    if not self.rope_high_freq_factor > self.rope_low_freq_factor:
      fail(f"model.rope_high_freq_factor={self.rope_high_freq_factor!r} must "
           f"exceed model.rope_low_freq_factor="
           f"{self.rope_low_freq_factor!r} (llama3 RoPE interpolates between "
           f"them).")
    if self.rope_low_freq_factor <= 0:
      fail(f"model.rope_low_freq_factor={self.rope_low_freq_factor!r} must "
           f"be positive.")
    if (not isinstance(self.rope_original_max_positions, int)
        or self.rope_original_max_positions <= 0):
      fail(f"model.rope_original_max_positions="
           f"{self.rope_original_max_positions!r} must be a positive integer "
           f"(the context length the model was pre-trained with).")
