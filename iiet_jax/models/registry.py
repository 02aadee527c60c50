"""The architectures: one record each, and the one list every module asks.

A record says everything the rest of the code needs to know about an
architecture without naming it: its decoder, how many times each layer runs
the block B_t, whether it keeps the multistep history, the parameters it adds
to Transformer++ (what the two-stage switch creates), its FLOPs beyond the
blocks, and how an export writes it (SPEC.md section 6). Adding one is
docs/adding_an_architecture.md.

This module imports nothing of the model code (decoders are named by import
path), so `config.py` and the config files can read it.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from iiet_jax.errors import UserError

# Export names of IIET and PCformer (SPEC.md section 6). Per layer i: the HF
# name and our path under the layer core; the whole model: the HF name and
# our path under the decoder, where "{j}" splits our leading axis.
_HISTORY_LAYER = (
    ("model.history.rouge_predictions_norm.{i}.weight",
     ("predictor_norm", "scale")),
    ("model.history.rouge_predictions_norm.{i}.bias",
     ("predictor_norm", "bias")),
    ("model.history.layer_norms.{i}.weight", ("corrector_norm", "scale")),
    ("model.history.layer_norms.{i}.bias", ("corrector_norm", "bias")),
)
_HISTORY_MODEL = (("model.history.weight", ("history", "weight")),
                  ("model.history.weight_c", ("history", "weight_c")))
# Our PyTorch twin (iiet_jax/pytorch), reached through config.json's auto_map.
_REMOTE_CODE = (("AutoConfig", "configuration_iiet.IIETConfig"),
                ("AutoModelForCausalLM", "modeling_iiet.IIETForCausalLM"))


class ArchitectureError(UserError, ValueError):
  """A model.arch that names no architecture."""

  kind = "Config"


@dataclasses.dataclass(frozen=True)
class Architecture:
  """One architecture; `cfg` below is a `ModelConfig`."""

  name: str                 # model.arch
  display_name: str         # in logs, plots and reports
  decoder: str              # "module:Class", built as Class(cfg)
  # NFE of each layer: how many times B_t runs per token.
  block_evaluations: Callable[[Any], tuple[int, ...]]
  # Keeps the learned history W, Wc (SPEC.md section 3): a Transformer++
  # can switch into it (SPEC.md section 5).
  history: bool = False
  # Regexes of every parameter path it adds to Transformer++ (the history
  # W / Wc, and also its norms, PCformer's alpha and RK norms): what the
  # switch creates and `optimizer.history_lr_scale` scales.
  added_params: tuple[str, ...] = ()
  # Forward FLOPs per token beyond the blocks and the head (train/flops.py).
  extra_flops: Callable[[Any], float] = lambda cfg: 0.0
  # Reads model.iterations (implicit iterations per layer): what influence,
  # IIAD and E-IIET apply to.
  implicit_iterations: bool = False
  # The paper's sweep of this architecture for `iiet sweep`: a model field
  # and its values; None sweeps the peak learning rate.
  paper_sweep: tuple[str, tuple] | None = None
  # At an inheriting switch (stages/switch_init.py): values that keep the
  # inherited Transformer++ function, and whether LNp_t normalises the layer
  # input h_{t-1} (else B_t's output, fitted on h_t).
  switch_inherit: tuple[tuple[str, float], ...] = ()
  predictor_norm_on_input: bool = False
  # config.json: model_type and the class in `architectures`; auto_map is
  # set when the class is our PyTorch twin (shipped as remote code).
  hf_model_type: str = "llama"
  pytorch_class: str = "LlamaForCausalLM"
  hf_auto_map: tuple[tuple[str, str], ...] = ()
  # generation_config.json use_cache: our twin keeps no KV cache.
  hf_use_cache: bool = True
  # HF names beyond the Llama ones (see _HISTORY_LAYER above).
  hf_layer_params: tuple[tuple[str, tuple[str, ...]], ...] = ()
  hf_model_params: tuple[tuple[str, tuple[str, ...]], ...] = ()

  @property
  def remote_code(self) -> bool:
    """Exports ship iiet_jax/pytorch and need trust_remote_code."""
    return bool(self.hf_auto_map)

  def decoder_class(self) -> type:
    module, _, name = self.decoder.partition(":")
    return getattr(importlib.import_module(module), name)


def _mix_flops(t: int, d: int) -> float:
  """One history mix of layer t: a weighted sum of t + 1 states."""
  return 2.0 * (t + 1) * d


def _iiet_extra_flops(cfg) -> float:
  # Each of the r_t iterations and the output mix of layer t (SPEC.md 3).
  return sum((r + 1) * _mix_flops(t, cfg.d_model)
             for t, r in enumerate(cfg.iterations, start=1))


def _pcformer_extra_flops(cfg) -> float:
  # The corrector and output mixes, and the RK combination (SPEC.md 4).
  return sum(2 * _mix_flops(t, cfg.d_model) + 2.0 * cfg.pc_order * cfg.d_model
             for t in range(1, cfg.num_layers + 1))


ARCHITECTURES = (
    Architecture(
        name="transformer", display_name="Transformer++",
        decoder="iiet_jax.models.transformer:TransformerDecoder",
        block_evaluations=lambda cfg: (1,) * cfg.num_layers),
    Architecture(
        name="iiet", display_name="IIET",
        decoder="iiet_jax.models.iiet:IIETDecoder",
        block_evaluations=lambda cfg: tuple(1 + r for r in cfg.iterations),
        history=True,
        added_params=(r"decoder/history/", r"/predictor_norm/",
                        r"/corrector_norm/"),
        extra_flops=_iiet_extra_flops, implicit_iterations=True,
        paper_sweep=("iterations", (1, 2, 3)),
        hf_model_type="iiet", pytorch_class="IIETForCausalLM",
        hf_auto_map=_REMOTE_CODE, hf_use_cache=False,
        hf_layer_params=_HISTORY_LAYER, hf_model_params=_HISTORY_MODEL),
    Architecture(
        name="pcformer", display_name="PCformer",
        decoder="iiet_jax.models.pcformer:PCformerDecoder",
        block_evaluations=lambda cfg: (cfg.pc_order + 1,) * cfg.num_layers,
        history=True,
        added_params=(r"decoder/history/", r"/predictor_norm/",
                        r"/corrector_norm/", r"decoder/alpha$",
                        r"decoder/rk_"),
        extra_flops=_pcformer_extra_flops,
        paper_sweep=("pc_order", (2, 4)),
        # alpha = 0: the RK predictor is P = h_{t-1}.
        switch_inherit=(("decoder/alpha", 0.0),),
        predictor_norm_on_input=True,
        hf_model_type="iiet", pytorch_class="IIETForCausalLM",
        hf_auto_map=_REMOTE_CODE, hf_use_cache=False,
        hf_layer_params=_HISTORY_LAYER,
        hf_model_params=_HISTORY_MODEL + (
            ("model.alpha", ("alpha",)),
            ("model.RK_norm.{j}.weight", ("rk_scale",)),
            ("model.RK_norm.{j}.bias", ("rk_bias",)))),
)
NAMES = tuple(a.name for a in ARCHITECTURES)
# The plain Transformer++ that every history architecture can switch from
# (SPEC.md section 5): the first phase of a two-stage run.
BASE = "transformer"
_BY_NAME = {a.name: a for a in ARCHITECTURES}
# Every architecture's added_params, for code that sees any tree.
ADDED_PARAMS = tuple(dict.fromkeys(
    p for a in ARCHITECTURES for p in a.added_params))


def unknown_message(name: Any) -> str:
  return (f"model.arch={name!r} is not an architecture; choose one of "
          f"{', '.join(NAMES)}.")


def get(name: str) -> Architecture:
  """The record of `name`; an ArchitectureError listing the known ones."""
  try:
    return _BY_NAME[name]
  except (KeyError, TypeError):
    raise ArchitectureError(unknown_message(name)) from None


def from_hf(model_type: str | None, arch_field: str | None) -> Architecture:
  """The record an exported config.json describes: its model_type, and for
  our twin's model_type its `iiet_arch` field (None: the twin's default)."""
  found = [a for a in ARCHITECTURES if a.hf_model_type == model_type]
  if not found:
    types = ", ".join(dict.fromkeys(a.hf_model_type for a in ARCHITECTURES))
    raise ArchitectureError(
        f"config.json has model_type={model_type!r}; known model types: "
        f"{types}.")
  if len(found) == 1:
    return found[0]
  name = found[0].name if arch_field is None else arch_field
  if name not in [a.name for a in found]:
    raise ArchitectureError(
        f"config.json has model_type={model_type!r} and iiet_arch="
        f"{arch_field!r}; that model type carries "
        f"{', '.join(a.name for a in found)}.")
  return get(name)
