"""Pure steps: `train_step(state, batch) -> (state, metrics)` and `eval_step`.

A batch is a dict of [B, T] arrays: `tokens` (int32) and optionally `mask`
(1 where a target token counts), `positions` and `segment_ids` (packed rows).
With `micro_batches = k` the step scans over k slices of B/k rows inside the
jitted program, summing float32 gradients, so the update equals that of one
batch of B. Losses are token sums divided once by the global token count.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from iiet_jax.models.registry import ADDED_PARAMS
from iiet_jax.parallel import sharding as shd
from iiet_jax.train.loss import batch_sums
from iiet_jax.train.state import TrainState

Batch = dict[str, jax.Array]
OPTIONAL_INPUTS = ("mask", "positions", "segment_ids")


def _split_micro(batch: Batch, k: int) -> Batch:
  """[B, ...] -> [k, B/k, ...] with micro-batch j = rows j, j+k, ...

  Strided rows keep every micro-batch spread over all data shards (each
  device holds a contiguous block of rows)."""
  def split(x):
    return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def _path_name(path) -> str:
  """A tree path as 'decoder/history/weight'."""
  return "/".join(str(getattr(k, "key", k)) for k in path)


def scale_history_updates(updates, scale: float):
  """Multiplies the updates of the parameters a history architecture adds
  to Transformer++ (ADDED_PARAMS: W / Wc, their norms, alpha) by
  `scale`: their learning rate times `scale`. Stateless, so the optimizer
  state is the same tree with any scale (the switch carries it over)."""
  if scale == 1.0:
    return updates

  def pick(path, u):
    name = _path_name(path)
    return u * scale if any(re.search(p, name) for p in ADDED_PARAMS) else u
  return jax.tree_util.tree_map_with_path(pick, updates)


# Parameter groups whose gradient norms every train step reports
# (`grad_norm/<group>`), first matching regex on the path wins: the
# embedding (and untied head), the history mix W / Wc and PCformer's alpha,
# every normalisation (B_t's RMSNorms, LNp / LNc, the RK norms, the final
# norm), and the rest of the blocks (attention and MLP weights).
GRAD_GROUPS = (("embedding", r"^embedding|^head"),
               ("history", r"decoder/history/|decoder/alpha$"),
               ("norms", r"norm"),
               ("blocks", r"."))


def group_norms(tree) -> dict[str, jax.Array]:
  """{group: global norm} over GRAD_GROUPS; groups absent from `tree` are
  left out."""
  groups: dict[str, list] = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    name = _path_name(path)
    group = next(g for g, pattern in GRAD_GROUPS if re.search(pattern, name))
    groups.setdefault(group, []).append(leaf)
  return {g: optax.global_norm(leaves) for g, leaves in groups.items()}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, micro_batches: int = 1,
                    z_loss: float = 0.0,
                    objective: Callable | None = None,
                    history_lr_scale: float = 1.0) -> Callable:
  """The pure train step; jit it with `jit_train_step`.

  `objective(params, batch, *extra) -> (summed loss, sums)` replaces the
  next-token loss (distillation passes the teacher's parameters as `extra`);
  `sums` holds at least nll, z and count; any other entry is reported as a
  metric divided by the token count.
  """

  def next_token(params, batch):
    sums = batch_sums(model, params, batch)
    return sums["nll"] + z_loss * sums["z"], sums

  grad_fn = jax.grad(objective or next_token, has_aux=True)

  def train_step(state: TrainState, batch: Batch, *extra):
    B = batch["tokens"].shape[0]
    if B % micro_batches:
      raise ValueError(f"Batch of {B} rows does not split into "
                       f"micro_batches={micro_batches}.")
    if micro_batches == 1:
      grads, sums = grad_fn(state.params, batch, *extra)
    else:
      def accumulate(carry, micro):
        grads, sums = grad_fn(state.params, micro, *extra)
        return jax.tree.map(jnp.add, carry, (grads, sums)), None

      micros = _split_micro(batch, micro_batches)
      shapes = jax.eval_shape(
          lambda: grad_fn(state.params, jax.tree.map(lambda x: x[0], micros),
                          *extra))
      zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), shapes)
      (grads, sums), _ = jax.lax.scan(accumulate, zeros, micros)
    count = jnp.maximum(sums["count"], 1.0)
    grads = jax.tree.map(lambda g: g / count, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = scale_history_updates(updates, history_lr_scale)
    params = optax.apply_updates(state.params, updates)
    loss = sums["nll"] / count
    new_state = state.replace(step=state.step + 1, params=params,
                              opt_state=opt_state).add_tokens(sums["count"])
    metrics = {
        "loss": loss,
        "perplexity": jnp.exp(loss),
        "z_loss": sums["z"] / count,
        "grad_norm": optax.global_norm(grads),
        "update_norm": optax.global_norm(updates),
        "learning_rate": schedule(state.step),
        "tokens": sums["count"],
        "tokens_seen": new_state.tokens_seen,
    }
    metrics.update({f"grad_norm/{g}": n
                    for g, n in group_norms(grads).items()})
    if isinstance(opt_state, optax.ApplyIfFiniteState):  # nonfinite=skip
      metrics["skipped_steps"] = opt_state.total_notfinite
      metrics["consecutive_skips"] = opt_state.notfinite_count
    metrics.update({k: v / count for k, v in sums.items()
                    if k not in ("nll", "z", "count")})
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module) -> Callable:
  """eval_step(params, batch) -> token sums {nll, z, count} to accumulate."""
  def eval_step(params, batch: Batch):
    return batch_sums(model, params, batch)
  return eval_step


class ShardedStep:
  """A step jitted with explicit shardings, traced under the mesh and rules."""

  def __init__(self, fn: Callable, mesh: Mesh, rules, in_shardings,
               out_shardings, donate_argnums=()):
    self.mesh, self.rules = mesh, rules
    self.jitted = jax.jit(fn, in_shardings=in_shardings,
                          out_shardings=out_shardings,
                          donate_argnums=donate_argnums)

  def __call__(self, *args):
    with jax.set_mesh(self.mesh), shd.axis_rules(self.rules):
      return self.jitted(*args)

  def lower(self, *args):
    with jax.set_mesh(self.mesh), shd.axis_rules(self.rules):
      return self.jitted.lower(*args)


def batch_shardings(batch_keys, mesh: Mesh, rules) -> dict[str, NamedSharding]:
  return {k: shd.batch_sharding(mesh, rules) for k in batch_keys}


def jit_train_step(train_step: Callable, state_shardings: Any, mesh: Mesh,
                   rules, batch_keys=("tokens",)) -> ShardedStep:
  """Jitted with in/out shardings; the input state is donated."""
  metrics_sharding = NamedSharding(mesh, PartitionSpec())
  return ShardedStep(
      train_step, mesh, rules,
      in_shardings=(state_shardings, batch_shardings(batch_keys, mesh, rules)),
      out_shardings=(state_shardings, metrics_sharding), donate_argnums=(0,))


def jit_eval_step(eval_step: Callable, param_shardings: Any, mesh: Mesh,
                  rules, batch_keys=("tokens",)) -> ShardedStep:
  return ShardedStep(
      eval_step, mesh, rules,
      in_shardings=(param_shardings, batch_shardings(batch_keys, mesh, rules)),
      out_shardings=NamedSharding(mesh, PartitionSpec()))
