"""Next-token cross-entropy and z-loss, computed in float32, and the model's
forward on a batch (a dict of [B, T] arrays: `tokens`, optionally `mask`,
`positions`, `segment_ids`)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def target_weights(tokens_BT: Array, mask_BT: Array | None = None,
                   segment_ids_BT: Array | None = None) -> Array:
  """[B, T-1]: 1 where predicting token i+1 from position i counts."""
  weights = jnp.ones(tokens_BT[:, 1:].shape, jnp.float32)
  if mask_BT is not None:
    weights = weights * mask_BT[:, 1:].astype(jnp.float32)
  if segment_ids_BT is not None:
    weights = weights * (segment_ids_BT[:, 1:] == segment_ids_BT[:, :-1])
  return weights


def kl_sum(student_BTV: Array, teacher_BTV: Array, weights_BT: Array,
           temperature: float = 1.0) -> Array:
  """sum over counted positions of KL(softmax(t/T) || softmax(s/T)) * T^2.

  Positions as in `next_token_sums` (the last one predicts nothing). T^2
  keeps gradient scales comparable across temperatures; at T = 1 it is the
  plain KL of SPEC.md section 5.
  """
  s = jax.nn.log_softmax(student_BTV[:, :-1].astype(jnp.float32) / temperature)
  t = jax.nn.log_softmax(teacher_BTV[:, :-1].astype(jnp.float32) / temperature)
  kl_BT = jnp.sum(jnp.exp(t) * (t - s), axis=-1)
  return jnp.sum(kl_BT * weights_BT) * temperature ** 2


def next_token_sums(logits_BTV: Array, tokens_BT: Array,
                    mask_BT: Array | None = None,
                    segment_ids_BT: Array | None = None) -> dict[str, Array]:
  """Summed losses of predicting token i+1 from position i, and their count.

  A target counts when `mask_BT` is 1 at it (padding is 0) and, for packed
  rows, when it lies in the same segment as its context. Sums rather than
  means, so micro-batches and hosts can be combined exactly.
  """
  logits = logits_BTV[:, :-1].astype(jnp.float32)
  targets_BT = tokens_BT[:, 1:]
  logz = jax.nn.logsumexp(logits, axis=-1)
  gold = jnp.take_along_axis(logits, targets_BT[..., None], axis=-1)[..., 0]
  weights = target_weights(tokens_BT, mask_BT, segment_ids_BT)
  return {"nll": jnp.sum((logz - gold) * weights),
          "z": jnp.sum(jnp.square(logz) * weights),
          "count": jnp.sum(weights)}


def next_token_loss(logits_BTV: Array, tokens_BT: Array,
                    mask_BT: Array | None = None,
                    segment_ids_BT: Array | None = None) -> tuple[Array, Array]:
  """Mean next-token cross-entropy and the number of targets it averages."""
  sums = next_token_sums(logits_BTV, tokens_BT, mask_BT, segment_ids_BT)
  return sums["nll"] / jnp.maximum(sums["count"], 1.0), sums["count"]


def forward(model, params, batch, **apply_kwargs):
  """The model on `batch["tokens"]` with the batch's packing; `apply_kwargs`
  go to `model.apply` (e.g. `mutable=["intermediates"]`)."""
  return model.apply({"params": params}, batch["tokens"],
                     positions_BT=batch.get("positions"),
                     segment_ids_BT=batch.get("segment_ids"), **apply_kwargs)


def batch_sums(model, params, batch) -> dict[str, Array]:
  """`next_token_sums` of the model's forward on `batch`."""
  return next_token_sums(forward(model, params, batch), batch["tokens"],
                         batch.get("mask"), batch.get("segment_ids"))


def evaluate(eval_step: Callable, params, batches,
             feed: Callable = lambda batch: batch) -> dict[str, float]:
  """Mean next-token loss of `eval_step`'s token sums over `batches`, each
  put through `feed` (e.g. onto the mesh) first."""
  nll = count = 0.0
  for batch in batches:
    sums = eval_step(params, feed(batch))
    nll += float(sums["nll"])
    count += float(sums["count"])
  loss = nll / max(count, 1.0)
  return {"loss": loss, "perplexity": float(np.exp(loss)), "tokens": count}
