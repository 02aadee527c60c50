"""The train state and its creation directly in sharded form.

`create_sharded_state` never materialises the model on one device: the state
is traced abstractly (`jax.eval_shape`), its logical partition specs become
named shardings, and `jax.jit(init, out_shardings=...)` creates every shard
where it lives.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from iiet_jax.parallel import sharding as shd


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  # Tokens trained on, exact past 2^31: tokens_seen = hi * 2^30 + lo.
  tokens_hi: jax.Array
  tokens_lo: jax.Array

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
    zero = jnp.zeros((), jnp.int32)
    return cls(step=zero, params=params, opt_state=tx.init(params),
               tokens_hi=zero, tokens_lo=zero)

  def add_tokens(self, count: jax.Array) -> "TrainState":
    lo = self.tokens_lo + count.astype(jnp.int32)
    return self.replace(tokens_hi=self.tokens_hi + lo // 2 ** 30,
                        tokens_lo=lo % 2 ** 30)

  @property
  def tokens_seen(self) -> jax.Array:
    """As float32: exact to 2^24, then to 7 significant digits (for logs)."""
    return (self.tokens_hi.astype(jnp.float32) * 2.0 ** 30
            + self.tokens_lo.astype(jnp.float32))


def init_fn(model: nn.Module, tx: optax.GradientTransformation,
            seq_len: int):
  """rng -> TrainState with logically-partitioned (boxed) leaves."""
  def init(rng):
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    params = model.init(rng, tokens)["params"]
    return TrainState.create(params, tx)
  return init


def state_shardings(model, tx, seq_len: int, mesh: Mesh, rules):
  """(abstract unboxed state, its NamedShardings), checked for divisibility."""
  boxed = jax.eval_shape(init_fn(model, tx, seq_len), jax.random.key(0))
  return shd.abstract_shardings(boxed, mesh, rules, "state")


def create_sharded_state(model, tx, seq_len: int, rng, mesh: Mesh, rules):
  """Initialises the state shard by shard; returns (state, shardings)."""
  _, shardings = state_shardings(model, tx, seq_len, mesh, rules)
  init = init_fn(model, tx, seq_len)
  with jax.set_mesh(mesh), shd.axis_rules(rules):
    state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)
  return state, shardings
