"""IIET and PCformer in PyTorch (SPEC.md sections 1, 3 and 4).

Parameter names are those of SPEC.md section 6 (a Llama model plus
`model.history.*`, and `model.alpha` / `model.RK_norm.*` for PCformer), so an
exported `model.safetensors` loads here and into the authors' release alike.
Numerics follow the JAX models: RMSNorm and LayerNorm in float32, the history
mixes summed in float32, attention softmax in float32, RoPE in the
rotate-half layout (plain, or llama3 scaling through transformers' own
frequencies), grouped-query attention when num_key_value_heads is below
num_attention_heads. Every block evaluation of IIET (predictor and each
iteration) sees its own inputs at all positions, as in training; this module
recomputes the whole sequence on every call (no KV cache), which is what
scoring and lm-evaluation-harness log-likelihoods need.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from .configuration_iiet import IIETConfig


class RMSNorm(nn.Module):
  def __init__(self, d, eps):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(d))
    self.eps = eps

  def forward(self, x):
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
    return self.weight * y.to(x.dtype)


class LayerNorm(nn.Module):
  """LNp / LNc / LNrk: gain and bias, computed and returned in float32."""

  def __init__(self, d, eps):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(d))
    self.bias = nn.Parameter(torch.zeros(d))
    self.eps = eps

  def forward(self, x):
    return F.layer_norm(x.float(), x.shape[-1:], self.weight.float(),
                        self.bias.float(), self.eps)


def rotate(x, cos, sin):
  """RoPE, rotate-half layout: pair i is (x[i], x[i + h/2]); float32."""
  half = x.shape[-1] // 2
  x32 = x.float()
  x1, x2 = x32[..., :half], x32[..., half:]
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


def head_dim(config):
  return getattr(config, "head_dim", None) or (
      config.hidden_size // config.num_attention_heads)


class Attention(nn.Module):
  """Query head n reads key / value head n // (heads / kv_heads)."""

  def __init__(self, config):
    super().__init__()
    d = config.hidden_size
    self.heads = config.num_attention_heads
    self.kv_heads = config.num_key_value_heads or self.heads
    self.head_dim = head_dim(config)
    self.q_proj = nn.Linear(d, self.heads * self.head_dim, bias=False)
    self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
    self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
    self.o_proj = nn.Linear(self.heads * self.head_dim, d, bias=False)

  def forward(self, x, cos, sin, allowed):
    B, T, _ = x.shape
    split = lambda y, n: y.view(B, T, n, self.head_dim).transpose(1, 2)
    # [B, kv, T, h] -> [B, heads, T, h], each kv head serving its group.
    group = lambda y: y.repeat_interleave(self.heads // self.kv_heads, 1)
    q = rotate(split(self.q_proj(x), self.heads), cos, sin)
    k = group(rotate(split(self.k_proj(x), self.kv_heads), cos, sin))
    v = group(split(self.v_proj(x), self.kv_heads))
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2))
    logits = logits * self.head_dim ** -0.5
    logits = logits.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(logits, -1).to(v.dtype)
    out = torch.matmul(probs, v).transpose(1, 2).reshape(B, T, -1)
    return self.o_proj(out)


class MLP(nn.Module):
  def __init__(self, config):
    super().__init__()
    d, f = config.hidden_size, config.intermediate_size
    self.gate_proj = nn.Linear(d, f, bias=False)
    self.up_proj = nn.Linear(d, f, bias=False)
    self.down_proj = nn.Linear(f, d, bias=False)

  def forward(self, x):
    return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
  """B_t: a = x + Attn(RMSNorm(x)); B_t(x) = a + MLP(RMSNorm(a))."""

  def __init__(self, config):
    super().__init__()
    d, eps = config.hidden_size, config.rms_norm_eps
    self.input_layernorm = RMSNorm(d, eps)
    self.self_attn = Attention(config)
    self.post_attention_layernorm = RMSNorm(d, eps)
    self.mlp = MLP(config)

  def forward(self, x, cos, sin, allowed):
    a = x + self.self_attn(self.input_layernorm(x), cos, sin, allowed)
    return a + self.mlp(self.post_attention_layernorm(a))


def average_init(n):
  """Row t holds 1/(t+1) in columns 0..t (SPEC.md section 3)."""
  rows = torch.arange(n)[:, None].float()
  return torch.where(torch.arange(n)[None, :] <= rows, 1.0 / (rows + 1), 0.0)


class History(nn.Module):
  """W, Wc and the per-layer LNp (`rouge_predictions_norm`) / LNc norms."""

  def __init__(self, config):
    super().__init__()
    L, d, eps = (config.num_hidden_layers, config.hidden_size,
                 config.layer_norm_eps)
    self.weight = nn.Parameter(average_init(L + 1))
    self.weight_c = nn.Parameter(average_init(L + 1))
    self.rouge_predictions_norm = nn.ModuleList(
        LayerNorm(d, eps) for _ in range(L))
    self.layer_norms = nn.ModuleList(LayerNorm(d, eps) for _ in range(L))


def stage_inputs(order):
  """(earlier stage feeding stage k, its factor); stage 0 reads y itself."""
  if order == 2:
    return ((0, 0.0), (1, 1.0))
  return ((0, 0.0), (1, 0.5), (2, 0.5), (3, 1.0))


class IIETPreTrainedModel(PreTrainedModel):
  config_class = IIETConfig
  base_model_prefix = "model"
  _no_split_modules = ["Block"]

  def _init_weights(self, module):
    std = self.config.initializer_range
    if isinstance(module, (nn.Linear, nn.Embedding)):
      nn.init.normal_(module.weight, std=std)
    elif isinstance(module, (RMSNorm, LayerNorm)):
      nn.init.ones_(module.weight)
      if isinstance(module, LayerNorm):
        nn.init.zeros_(module.bias)
    elif isinstance(module, History):
      with torch.no_grad():
        module.weight.copy_(average_init(module.weight.shape[0]))
        module.weight_c.copy_(average_init(module.weight.shape[0]))
    elif isinstance(module, IIETModel) and module.alpha is not None:
      nn.init.constant_(module.alpha, 0.5)


class IIETModel(IIETPreTrainedModel):
  """Embedding, the L layers with their ODE history, final RMSNorm."""

  def __init__(self, config):
    super().__init__(config)
    d = config.hidden_size
    self.embed_tokens = nn.Embedding(config.vocab_size, d)
    self.layers = nn.ModuleList(Block(config)
                                for _ in range(config.num_hidden_layers))
    self.norm = RMSNorm(d, config.rms_norm_eps)
    self.history = History(config)
    self.alpha = None
    if config.iiet_arch == "pcformer":
      self.alpha = nn.Parameter(torch.full((1,), 0.5))
      self.RK_norm = nn.ModuleList(LayerNorm(d, config.layer_norm_eps)
                                   for _ in range(config.pc_order))
    self.post_init()

  def get_input_embeddings(self):
    return self.embed_tokens

  def set_input_embeddings(self, value):
    self.embed_tokens = value

  def rope(self, position_ids):
    rope = self.config.rope_parameters
    kind = rope.get("rope_type", "default")
    if kind == "llama3":
      freq, _ = ROPE_INIT_FUNCTIONS[kind](self.config, position_ids.device)
    elif kind == "default":
      dim = head_dim(self.config)
      freq = rope["rope_theta"] ** (-torch.arange(
          dim // 2, dtype=torch.float32, device=position_ids.device) * 2 / dim)
    else:
      raise ValueError(f"rope_parameters has rope_type={kind!r}; this model "
                       f"code runs 'default' and 'llama3'.")
    angle = position_ids.float()[..., None] * freq     # [B, T, h/2]
    return angle.cos()[:, None], angle.sin()[:, None]  # [B, 1, T, h/2]

  def predictor(self, t, h, cos, sin, allowed):
    """S_t before any implicit step (IIET: explicit Euler; PCformer: RK)."""
    block = self.layers[t]
    lnp = self.history.rouge_predictions_norm[t]
    if self.alpha is None:
      return lnp(block(h, cos, sin, allowed)).to(h.dtype)
    order = self.config.pc_order
    y32, stages = h.float(), [None]
    for k, (src, factor) in enumerate(stage_inputs(order)):
      x = (y32 + factor * stages[src]).to(h.dtype) if src else h
      stages.append(self.RK_norm[k](block(x, cos, sin, allowed)))
    a = self.alpha.float()[0]
    p32 = y32
    for k, f32 in enumerate(stages[1:], start=1):
      p32 = p32 + a * (1 - a) ** (order - k) * f32
    return lnp(p32).to(h.dtype)

  def forward(self, input_ids, attention_mask=None, position_ids=None,
              **kwargs):
    del kwargs  # past_key_values, use_cache, ...: the model keeps no cache
    x = self.embed_tokens(input_ids)
    B, T = input_ids.shape
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    allowed = causal[None, None]
    if attention_mask is not None:
      keep = attention_mask.bool()
      if position_ids is None:  # left padding: real tokens count from 0
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
      # Padded rows keep their own position so no softmax row is empty.
      allowed = allowed & (keep[:, None, None, :] |
                           torch.eye(T, dtype=torch.bool, device=x.device))
    if position_ids is None:
      position_ids = torch.arange(T, device=x.device)[None].expand(B, T)
    cos, sin = self.rope(position_ids)

    W, Wc = self.history.weight.float(), self.history.weight_c.float()
    states = [x.float()]   # S_0 .. S_t in float32
    mix = lambda w, t, s: sum(w[t, j] * states[j] for j in range(t)) + \
        w[t, t] * s.float()
    h = x
    for t in range(1, self.config.num_hidden_layers + 1):
      s = self.predictor(t - 1, h, cos, sin, allowed)
      steps = (1 if self.alpha is not None
               else self.config.iterations[t - 1])
      lnc = self.history.layer_norms[t - 1]
      for _ in range(steps):
        u = mix(W, t, s).to(x.dtype)
        s = lnc(self.layers[t - 1](u, cos, sin, allowed)).to(x.dtype)
      h = mix(Wc, t, s).to(x.dtype)
      states.append(s.float())
    return self.norm(h)


class IIETForCausalLM(IIETPreTrainedModel, GenerationMixin):
  _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

  def __init__(self, config):
    super().__init__(config)
    self.model = IIETModel(config)
    self.lm_head = nn.Linear(config.hidden_size, config.vocab_size,
                             bias=False)
    self.post_init()

  def get_input_embeddings(self):
    return self.model.embed_tokens

  def get_output_embeddings(self):
    return self.lm_head

  def forward(self, input_ids, attention_mask=None, position_ids=None,
              labels=None, **kwargs):
    h = self.model(input_ids, attention_mask, position_ids, **kwargs)
    logits = torch.matmul(h, self.lm_head.weight.to(h.dtype).T).float()
    loss = None
    if labels is not None:
      loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                             labels[:, 1:].reshape(-1), ignore_index=-100)
    return CausalLMOutputWithPast(loss=loss, logits=logits)

  def prepare_inputs_for_generation(self, input_ids, attention_mask=None,
                                    **kwargs):
    return {"input_ids": input_ids, "attention_mask": attention_mask}
