"""`python -m iiet_jax.main COMMAND` and the `iiet` console script
(pyproject.toml); the command line itself is the `iiet_jax.cli` package."""

from iiet_jax.cli import run

if __name__ == "__main__":
  run()
