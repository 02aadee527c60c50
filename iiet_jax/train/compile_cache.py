"""JAX's persistent compilation cache, on for every run.

`config.compile_cache_dir`:
  "auto" (default)  one cache shared by every run of the host
                    (~/.cache/iiet_jax/compile_cache), or of the bucket when
                    the workdir is on gs:// (gs://BUCKET/iiet_jax/compile_cache),
                    so a restart, or another run of the same shapes, loads
                    its compiled steps instead of compiling them again
  a path            that folder (local or gs://)
  ""                off

Entries are keyed by the program, the devices and the compiler flags, so a
shared folder is safe; JAX writes each entry whole. Compiles faster than
`MIN_COMPILE_SECONDS` are not worth a file and stay uncached.
"""

from __future__ import annotations

import os

import jax

DEFAULT = "~/.cache/iiet_jax/compile_cache"
MIN_COMPILE_SECONDS = 0.5


def directory(config, workdir) -> str | None:
  """The cache folder `config` asks for, given the run's `workdir`."""
  path = config.get("compile_cache_dir", "auto")
  if not path:
    return None
  if path == "auto":
    workdir = os.fspath(workdir)
    if workdir.startswith("gs://"):
      bucket = workdir[len("gs://"):].split("/", 1)[0]
      return f"gs://{bucket}/iiet_jax/compile_cache"
    return os.path.expanduser(DEFAULT)
  return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def enable(config, workdir) -> str | None:
  """Points JAX's persistent cache at `directory(config, workdir)` for this
  process (before its first compile); returns the folder, None when off."""
  from jax.experimental.compilation_cache import compilation_cache
  path = directory(config, workdir)
  if path is None:
    if jax.config.jax_compilation_cache_dir:
      jax.config.update("jax_compilation_cache_dir", None)
      compilation_cache.reset_cache()
    return None
  if jax.config.jax_compilation_cache_dir != path:
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      MIN_COMPILE_SECONDS)
    compilation_cache.reset_cache()   # the next compile opens the new one
  return path
