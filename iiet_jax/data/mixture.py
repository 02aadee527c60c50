"""Weighted mixtures of corpora: `data.mixture` in, one document stream out.

  data.mixture = {"arxiv": {"paths": ("/data/arxiv/*.jsonl.zst",),
                            "weight": 4.6},
                  "github": {"paths": ("/data/github",), "weight": 5.2}}

A weight is a source's share of the training *tokens* (normalised over the
sources), the way SlimPajama's and RedPajama's proportions are given. Grain
mixes *documents*, so each source's document rate is its token share
divided by its mean document length (known from `iiet prepare`'s counts):
the expected tokens per source then follow the weights exactly, and a given
seed always gives the same order. Every source is shuffled with its own
seed and repeated, so a small source is seen more often, never exhausted.

Each training document carries its source's index through packing, and
`SourceTokens` counts the tokens per source that reach the batches (after
packing, padding excluded); its count is part of the data iterator's
checkpointed state, so it resumes exactly with the run.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import grain
import numpy as np

from iiet_jax.errors import UserError


class MixtureError(UserError, ValueError):
  """A `data.mixture` that cannot be mixed."""

  kind = "Config"


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SINGLE = "corpus"   # the one source of a run without a mixture


def sources(data) -> dict[str, tuple[str, ...]]:
  """{name: paths} of the sources `data` names, sorted by name: the
  mixture's, or `data.paths` as the one source "corpus"."""
  mixture = data.get("mixture") or {}
  if not mixture:
    return {SINGLE: tuple(data.paths)}
  if data.paths:
    raise MixtureError(
        f"data.paths={list(data.paths)} and data.mixture are both set; a "
        f"mixture names its files per source (data.mixture.NAME.paths). "
        f"Leave data.paths empty.")
  out = {}
  for name in sorted(mixture):
    entry = mixture[name]
    if not _NAME.match(name):
      raise MixtureError(f"data.mixture source name {name!r} must be letters, "
                         f"digits, '_', '.' or '-' (it names a folder).")
    paths = entry.get("paths") if hasattr(entry, "get") else None
    if isinstance(paths, str):
      paths = (paths,)
    if not paths:
      raise MixtureError(f"data.mixture.{name}.paths is empty: give the "
                         f"files, folders or globs of source {name!r}.")
    out[name] = tuple(paths)
  return out


def weights(data) -> dict[str, float] | None:
  """{name: token share} (summing to 1), or None without a mixture."""
  mixture = data.get("mixture") or {}
  if not mixture:
    return None
  raw = {}
  for name in sorted(mixture):
    weight = mixture[name].get("weight")
    if (isinstance(weight, bool) or not isinstance(weight, (int, float))
        or not math.isfinite(weight) or weight <= 0):
      raise MixtureError(
          f"data.mixture.{name}.weight={weight!r} must be a positive number "
          f"(a share of the training tokens; the weights need not sum to 1). "
          f"Remove the source to leave it out.")
    raw[name] = float(weight)
  total = sum(raw.values())
  return {name: w / total for name, w in raw.items()}


def document_rates(token_shares: Sequence[float],
                   mean_lengths: Sequence[float]) -> list[float]:
  """Per-source shares of documents that give `token_shares` of tokens."""
  rates = [s / length for s, length in zip(token_shares, mean_lengths)]
  total = sum(rates)
  return [r / total for r in rates]


class Tag(grain.transforms.Map):
  """ids -> {"tokens": ids, "source": the source's index per token}."""

  def __init__(self, index: int):
    self.index = index

  def map(self, ids: np.ndarray) -> dict[str, np.ndarray]:
    return {"tokens": ids, "source": np.full_like(ids, self.index)}


def mixed(parts: Sequence[grain.MapDataset], rates: Sequence[float],
          ) -> grain.MapDataset:
  """Documents of several (repeated) sources in the fixed order Grain's
  mixing gives `rates`."""
  return grain.MapDataset.mix(list(parts), list(rates))


class SourceTokens(grain.IterDataset):
  """Batches without their "source" key; the tokens each source gave,
  counted, in the iterator's state (see module doc)."""

  def __init__(self, parent: grain.IterDataset, names: Sequence[str]):
    super().__init__(parent)
    self.names = tuple(names)

  def __iter__(self) -> "_SourceTokensIterator":
    return _SourceTokensIterator(self._parent.__iter__(), self.names)


class _SourceTokensIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, names: Sequence[str]):
    super().__init__(parent)
    self.names = tuple(names)
    self.counts = np.zeros(len(names), np.int64)

  def __next__(self) -> dict[str, np.ndarray]:
    batch = dict(next(self._parent))
    source = batch.pop("source")
    self.counts += np.bincount(source[batch["mask"] > 0].ravel(),
                               minlength=len(self.names))[:len(self.names)]
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(),
            "source_tokens": [int(c) for c in self.counts]}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self.counts = np.asarray(state["source_tokens"], np.int64)

  def tokens(self) -> dict[str, int]:
    return {n: int(c) for n, c in zip(self.names, self.counts)}
