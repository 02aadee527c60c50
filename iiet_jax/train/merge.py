"""Merging a loaded tree into a fresh one, failing loudly on any mismatch.

Used by the Transformer++ -> IIET switch (SPEC.md section 5: embedding,
blocks, final norm and head carry over, the history parameters start at
their init) and by warm starts from another run. A leaf is named by its path,
e.g. `decoder/stack/layers/layer/block/mlp/up`; optimizer-state leaves carry
their parameter's path inside theirs, so one rule covers both trees.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax

from iiet_jax.errors import UserError


class MergeError(UserError, ValueError):
  """Trees that differ in a way nobody allowed."""

  kind = "Checkpoint"


def _name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def leaf_paths(tree) -> dict[str, Any]:
  """{"a/b/c": leaf} for every leaf of `tree`."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_name(k) for k in path): leaf for path, leaf in flat}


def _matches(path: str, patterns: Sequence[str]) -> bool:
  return any(re.search(p, path) for p in patterns)


def merge(loaded, fresh, *, allow_new: Sequence[str] = (),
          allow_dropped: Sequence[str] = (), what: str = "params"):
  """`fresh` with every leaf that `loaded` has at the same path replaced.

  A leaf only in `fresh` must match a regex in `allow_new` (it keeps its
  fresh value); a leaf only in `loaded` must match one in `allow_dropped`.
  Shapes and dtypes must agree. Loaded leaves are placed on the fresh leaf's
  sharding. Returns (merged tree, {"carried": n, "new": [...], "dropped":
  [...]}).
  """
  old = leaf_paths(loaded)
  new = leaf_paths(fresh)
  only_new = [p for p in new if p not in old]
  only_old = [p for p in old if p not in new]
  errors = [f"{what}/{p} is new and not allowed to be"
            for p in only_new if not _matches(p, allow_new)]
  errors += [f"{what}/{p} would be dropped and is not allowed to be"
             for p in only_old if not _matches(p, allow_dropped)]
  for path in new.keys() & old.keys():
    a, b = old[path], new[path]
    if (a.shape, a.dtype) != (b.shape, b.dtype):
      errors.append(f"{what}/{path}: loaded {a.dtype}{list(a.shape)}, "
                    f"expected {b.dtype}{list(b.shape)}")
  if errors:
    shown = "\n  ".join(errors[:20])
    more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
    raise MergeError(f"Cannot merge the loaded {what} into the model:\n  "
                     f"{shown}{more}\nAllow intended differences explicitly "
                     f"(allow_new / allow_dropped patterns).")

  def pick(path_keys, leaf):
    path = "/".join(_name(k) for k in path_keys)
    if path not in old:
      return leaf
    sharding = getattr(leaf, "sharding", None)
    return old[path] if sharding is None else jax.device_put(old[path],
                                                             sharding)

  merged = jax.tree_util.tree_map_with_path(pick, fresh)
  report = {"carried": len(new) - len(only_new), "new": only_new,
            "dropped": only_old}
  return merged, report
