"""An independent plain-JAX implementation of SPEC.md sections 1-4.

Written from the equations alone: explicit loops over layers and iterations,
the history kept as a Python list and summed directly, attention through an
explicit softmax with kv heads repeated for grouped queries, RoPE through
complex rotation. No Flax, nothing imported from
`iiet_jax.models`. Parameters come in a plain layout (`ReferenceParams`) that
`from_flax` fills from a Flax parameter tree; matrices act as `x @ W`.
"""

from __future__ import annotations

import functools

import numpy as np
import jax
import jax.numpy as jnp


def rms_norm(x, g, eps=1e-6):
  return x / jnp.sqrt(jnp.mean(x ** 2, axis=-1, keepdims=True) + eps) * g


def layer_norm(x, g, b, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  sigma2 = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / jnp.sqrt(sigma2 + eps) * g + b


def rope_theta(cfg):
  """theta_i of every rotated pair, float64; `cfg.rope_type` default or llama3.

  llama3 (Llama 3.1's published recipe): with L0 the original context and
  wavelength lambda_i = 2 pi / theta_i, pairs with lambda_i < L0 / high keep
  theta_i, those with lambda_i > L0 / low get theta_i / factor, and between
  the two theta_i is blended, (1 - s) theta_i / factor + s theta_i, with
  s = (L0 / lambda_i - low) / (high - low)."""
  dh = cfg.d_model // cfg.num_heads
  theta = [cfg.rope_base ** (-2.0 * i / dh) for i in range(dh // 2)]
  if cfg.rope_type == "default":
    return np.array(theta, np.float64)
  assert cfg.rope_type == "llama3", cfg.rope_type
  L0, low, high = (cfg.rope_original_max_positions, cfg.rope_low_freq_factor,
                   cfg.rope_high_freq_factor)
  out = []
  for t in theta:
    wavelength = 2 * np.pi / t
    if wavelength < L0 / high:
      out.append(t)
    elif wavelength > L0 / low:
      out.append(t / cfg.rope_factor)
    else:
      s = (L0 / wavelength - low) / (high - low)
      out.append((1 - s) * t / cfg.rope_factor + s * t)
  return np.array(out, np.float64)


def rope(x, positions, theta):
  """x: [B, T, heads, dh]. Pair i = (x[i], x[i + dh/2]) rotated by pos * theta_i."""
  dh = x.shape[-1]
  angle = positions[..., None].astype(jnp.float32) * jnp.asarray(
      theta, jnp.float32)
  z = (x[..., : dh // 2] + 1j * x[..., dh // 2:]).astype(jnp.complex64)
  z = z * jnp.exp(1j * angle.astype(jnp.complex64))[:, :, None, :]
  return jnp.concatenate([z.real, z.imag], axis=-1).astype(jnp.float32)


def attention(x, p, num_heads, positions, segment_ids):
  """Grouped-query attention: the kv heads (as many as wk's columns hold) are
  repeated explicitly, kv head j serving query heads j*G .. j*G + G-1."""
  B, T, d = x.shape
  dh = d // num_heads
  kv_heads = p["wk"].shape[1] // dh
  group = num_heads // kv_heads
  split = lambda y, n: y.reshape(B, T, n, dh)
  repeat = lambda y: jnp.repeat(y, group, axis=2)
  q = rope(split(x @ p["wq"], num_heads), positions, p["rope_theta"])
  k = repeat(rope(split(x @ p["wk"], kv_heads), positions, p["rope_theta"]))
  v = repeat(split(x @ p["wv"], kv_heads))
  scores = jnp.einsum("bqhc,bkhc->bhqk", q, k) / np.sqrt(dh)
  allowed = np.tril(np.ones((T, T), bool))[None, None]
  if segment_ids is not None:
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    allowed = allowed & same[:, None]
  scores = jnp.where(allowed, scores, -jnp.inf)
  probs = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum("bhqk,bkhc->bqhc", probs, v).reshape(B, T, d)
  return out @ p["wo"]


def block(x, p, num_heads, positions, segment_ids):
  """B_t: a = x + Attn(RMSNorm(x)); B_t(x) = a + MLP(RMSNorm(a))."""
  a = x + attention(rms_norm(x, p["norm_att"]), p, num_heads, positions,
                    segment_ids)
  m = rms_norm(a, p["norm_mlp"])
  return a + (jax.nn.silu(m @ p["w_gate"]) * (m @ p["w_up"])) @ p["w_down"]


def _head(h, P):
  h = rms_norm(h, P["norm_f"])
  return h @ (P["embedding"].T if P["head"] is None else P["head"])


def _defaults(tokens, positions):
  B, T = tokens.shape
  if positions is None:
    positions = np.broadcast_to(np.arange(T), (B, T))
  return positions


def transformer(tokens, P, num_heads, positions=None, segment_ids=None):
  positions = _defaults(tokens, positions)
  h = P["embedding"][tokens]
  for p in P["layers"]:
    h = block(h, p, num_heads, positions, segment_ids)
  return _head(h, P)


def iiet(tokens, P, num_heads, iterations, positions=None, segment_ids=None,
         trace=None):
  """`trace`, a list, receives [S_t^(0), ..., S_t^(r_t)] of every layer."""
  positions = _defaults(tokens, positions)
  W, Wc = P["W"], P["Wc"]
  S = [P["embedding"][tokens]]
  h = S[0]
  for t, p in enumerate(P["layers"], start=1):
    S.append(layer_norm(block(h, p, num_heads, positions, segment_ids),
                        *P["LNp"][t - 1]))
    states = [S[t]]
    for _ in range(iterations[t - 1]):
      u = sum(W[t, j] * S[j] for j in range(t + 1))
      S[t] = layer_norm(block(u, p, num_heads, positions, segment_ids),
                        *P["LNc"][t - 1])
      states.append(S[t])
    if trace is not None:
      trace.append(states)
    h = sum(Wc[t, j] * S[j] for j in range(t + 1))
  return _head(h, P)


def pcformer(tokens, P, num_heads, order, positions=None, segment_ids=None):
  positions = _defaults(tokens, positions)
  W, Wc, a = P["W"], P["Wc"], P["alpha"]
  S = [P["embedding"][tokens]]
  h = S[0]
  for t, p in enumerate(P["layers"], start=1):
    y = h
    B = lambda z: block(z, p, num_heads, positions, segment_ids)
    rk = P["LNrk"]
    F1 = layer_norm(B(y), *rk[0])
    if order == 2:
      F2 = layer_norm(B(y + F1), *rk[1])
      pred = y + a * (1 - a) * F1 + a * F2
    else:
      F2 = layer_norm(B(y + F1 / 2), *rk[1])
      F3 = layer_norm(B(y + F2 / 2), *rk[2])
      F4 = layer_norm(B(y + F3), *rk[3])
      pred = (y + a * (1 - a) ** 3 * F1 + a * (1 - a) ** 2 * F2
              + a * (1 - a) * F3 + a * F4)
    S.append(layer_norm(pred, *P["LNp"][t - 1]))
    u = sum(W[t, j] * S[j] for j in range(t + 1))
    S[t] = layer_norm(B(u), *P["LNc"][t - 1])
    h = sum(Wc[t, j] * S[j] for j in range(t + 1))
  return _head(h, P)


@functools.partial(jax.jit, static_argnums=0)
def forward(cfg, tokens, P, positions=None, segment_ids=None):
  """Dispatch on a (hashable) `ModelConfig`-like object's `arch`."""
  args = (tokens, P, cfg.num_heads)
  kw = dict(positions=positions, segment_ids=segment_ids)
  if cfg.arch == "transformer":
    return transformer(*args, **kw)
  if cfg.arch == "iiet":
    return iiet(*args, cfg.iterations, **kw)
  return pcformer(*args, cfg.pc_order, **kw)


# --- the Flax layout -> the plain layout used above ------------------------

def _layer_trees(decoder, num_layers):
  stack = decoder["stack"]
  if "layers" in stack:  # scanned: leading layer axis
    return [jax.tree.map(lambda a, i=i: a[i], stack["layers"]["layer"])
            for i in range(num_layers)]
  return [stack[f"layers_{i}"]["layer"] for i in range(num_layers)]


def from_flax(params, cfg):
  """Reference parameters from an (unboxed) Flax `params` collection."""
  d = cfg.d_model
  theta = rope_theta(cfg)
  decoder = params["decoder"]
  layers = []
  for lp in _layer_trees(decoder, cfg.num_layers):
    b = lp["block"]
    att = b["attention"]
    layers.append(dict(
        wq=att["query"].reshape(d, d), wo=att["out"].reshape(d, d),
        wk=att["key"].reshape(d, -1), wv=att["value"].reshape(d, -1),
        rope_theta=theta,
        norm_att=b["attention_norm"]["scale"], norm_mlp=b["mlp_norm"]["scale"],
        w_gate=b["mlp"]["gate"], w_up=b["mlp"]["up"], w_down=b["mlp"]["down"],
        LNp=(lp.get("predictor_norm", {}).get("scale"),
             lp.get("predictor_norm", {}).get("bias")),
        LNc=(lp.get("corrector_norm", {}).get("scale"),
             lp.get("corrector_norm", {}).get("bias")),
    ))
  P = dict(embedding=params["embedding"], head=params.get("head"),
           norm_f=params["final_norm"]["scale"], layers=layers)
  if "history" in decoder:  # IIET, PCformer: W, Wc, LNp_t, LNc_t
    P.update(W=decoder["history"]["weight"], Wc=decoder["history"]["weight_c"],
             LNp=[l.pop("LNp") for l in layers],
             LNc=[l.pop("LNc") for l in layers])
  if cfg.arch == "pcformer":
    P.update(alpha=decoder["alpha"][0],
             LNrk=[(decoder["rk_scale"][k], decoder["rk_bias"][k])
                   for k in range(cfg.pc_order)])
  return P
