"""The PyTorch twin of a JAX model, trained the way bench/train_throughput.py
times it.

The twin is the model an export of the JAX one loads as: stock
`transformers` LlamaForCausalLM for Transformer++, our iiet_jax/pytorch
IIETForCausalLM for IIET, E-IIET and PCformer. Its config is the export's
config.json (`export.names.hf_config`) and its weights are the JAX
parameters carried over by `export.names.to_hf`, so both sides start from
the same point. One train step, float32: next-token cross-entropy on the
batch, `loss.backward()`, global-norm clipping (the JAX step clips too),
`torch.optim.AdamW` with the run's hyper-parameters at the peak learning rate
and the JAX decay mask (block projections and an untied head decay; norms,
history, alpha and embedding do not), `zero_grad`.

Only this file imports torch, and only inside functions: without the `torch`
extra the bench still runs its JAX rows (`missing()` says why not these).
"""

from __future__ import annotations

import jax
import numpy as np

from iiet_jax.export import names

# Parameter names that decay, as iiet_jax/train/optimizer.py DECAYED does.
DECAYED = ("_proj.weight", "lm_head.weight")


def missing() -> str | None:
  """None when torch and transformers import, else what is missing."""
  try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
  except ImportError as err:
    return (f"{err}; PyTorch rows need the torch extra: "
            f"pip install -e '.[torch]'")
  return None


def build(cfg, params):
  """The PyTorch model of ModelConfig `cfg` holding JAX `params`."""
  import torch
  hf = names.hf_config(cfg)
  if cfg.arch == "transformer":
    from transformers import LlamaConfig, LlamaForCausalLM
    model = LlamaForCausalLM(LlamaConfig.from_dict(hf))
  else:
    from iiet_jax.pytorch.configuration_iiet import IIETConfig
    from iiet_jax.pytorch.modeling_iiet import IIETForCausalLM
    model = IIETForCausalLM(IIETConfig.from_dict(hf))
  tensors = names.to_hf(jax.device_get(params), cfg)
  result = model.load_state_dict(
      {k: torch.from_numpy(np.array(v, np.float32)) for k, v in
       tensors.items()}, strict=False)
  tied = {"lm_head.weight"} if cfg.tie_embeddings else set()
  if set(result.missing_keys) != tied or result.unexpected_keys:
    raise ValueError(f"PyTorch twin of {cfg.arch}: missing "
                     f"{result.missing_keys}, unexpected "
                     f"{result.unexpected_keys}")
  if cfg.tie_embeddings:
    assert model.lm_head.weight is model.model.embed_tokens.weight
  return model.float().train()


class TorchRun:
  """The twin, its AdamW and the fixed batch; `step()` is one train step."""

  def __init__(self, cfg, params, tokens, opt):
    import torch
    self.model = build(cfg, params)
    named = list(self.model.named_parameters())  # a tied head appears once
    decay = [p for n, p in named if n.endswith(DECAYED)]
    rest = [p for n, p in named if not n.endswith(DECAYED)]
    self.params = [p for _, p in named]
    self.clip_norm = opt.clip_norm
    self.optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt.weight_decay},
         {"params": rest, "weight_decay": 0.0}],
        lr=opt.peak_lr, betas=(opt.b1, opt.b2), eps=opt.eps)
    self.tokens = torch.as_tensor(np.array(tokens), dtype=torch.long)

  @property
  def param_count(self) -> int:
    return sum(p.numel() for p in self.params)

  def loss(self):
    """Mean next-token cross-entropy of the batch (a 0-d tensor)."""
    import torch.nn.functional as F
    logits = self.model(self.tokens, use_cache=False).logits.float()
    return F.cross_entropy(logits[:, :-1].flatten(0, 1),
                           self.tokens[:, 1:].flatten())

  def step(self) -> float:
    """One train step; returns the loss before it."""
    import torch
    loss = self.loss()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    return loss.item()
