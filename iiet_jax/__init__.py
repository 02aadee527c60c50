"""iiet_jax: pre-training the Iterative Implicit Euler Transformer in JAX/Flax."""

__version__ = "0.1.0"
