"""AdamW with warm-up + cosine decay and global-norm clipping (paper recipe).

Weight decay applies to the weight matrices of the blocks and the untied head
only: norms, the history W / Wc, PCformer's alpha and the embedding are not
decayed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from iiet_jax.models.config import ConfigError

# Parameter leaf names that are decayed (projections and MLP of B_t, the head).
DECAYED = frozenset({"query", "key", "value", "out", "gate", "up", "down",
                     "head"})


def learning_rate_schedule(opt, total_steps: int) -> optax.Schedule:
  """Linear warm-up to `peak_lr`, cosine decay to `peak_lr * end_lr_ratio`."""
  if total_steps <= opt.warmup_steps:
    raise ConfigError(
        f"total_steps={total_steps} must exceed "
        f"optimizer.warmup_steps={opt.warmup_steps}: raise "
        f"--config.total_steps or lower --config.optimizer.warmup_steps.")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.peak_lr, warmup_steps=opt.warmup_steps,
      decay_steps=total_steps, end_value=opt.peak_lr * opt.end_lr_ratio)


def decay_mask(params) -> Any:
  def decayed(path, _):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return bool(names) and names[-1] in DECAYED
  return jax.tree_util.tree_map_with_path(decayed, params)


def stored_in(dtype, inner: optax.GradientTransformation
              ) -> optax.GradientTransformation:
  """Keeps `inner`'s floating-point state in `dtype`, computing in float32."""
  def cast(tree, to):
    return jax.tree.map(
        lambda x: x.astype(to) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        tree)

  def init(params):
    return cast(inner.init(params), dtype)

  def update(updates, state, params=None):
    updates, state = inner.update(updates, cast(state, jnp.float32), params)
    return updates, cast(state, dtype)

  return optax.GradientTransformation(init, update)


def make_optimizer(opt, total_steps: int, max_skips: int = 0
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`opt` is the `optimizer` block of the config. `max_skips` > 0 drops
  non-finite updates, up to that many in a row (config.nonfinite=skip,
  train/divergence.py)."""
  if opt.moments_dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"optimizer.moments_dtype={opt.moments_dtype!r}; choose "
                     f"float32 or bfloat16.")
  schedule = learning_rate_schedule(opt, total_steps)
  adamw = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                      weight_decay=opt.weight_decay, mask=decay_mask)
  if opt.moments_dtype == "bfloat16":
    adamw = stored_in(jnp.bfloat16, adamw)
  tx = optax.chain(optax.clip_by_global_norm(opt.clip_norm), adamw)
  if max_skips:
    tx = optax.apply_if_finite(tx, max_consecutive_errors=max_skips)
  return tx, schedule
