"""The data side of a run: a config in, this process's batches out.

  loaders = make_loaders(config)        # prepares corpus + tokenizer once
  batch = next(loaders.train)           # this process's rows, numpy
  loaders.train.get_state()             # for checkpoints
  for batch in loaders.validation: ...  # fixed, finite, same on every run
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from iiet_jax.data import pipeline
from iiet_jax.data import sources
from iiet_jax.data import tokenizer as tok_lib


@dataclasses.dataclass
class Loaders:
  train: pipeline.TrainIterator
  validation: list[dict[str, np.ndarray]]
  tokenizer: tok_lib.Tokenizer | None
  batch_keys: tuple[str, ...]
  description: str

  def close(self) -> None:
    self.train.close()


def make_loaders(config, process_index: int | None = None,
                 process_count: int | None = None) -> Loaders:
  """Opens `config.data` for this process (default: JAX's process index)."""
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  inputs = sources.open_inputs(config.data, config.model.vocab_size)
  spec = pipeline.PipelineConfig.from_config(config)
  validation = pipeline.validation_batches(
      inputs.validation, inputs.to_ids, spec, config.data.eval_batches,
      process_index, process_count,
      doc_tokens=config.data.get("eval_doc_tokens", 0))
  train = pipeline.TrainIterator(pipeline.train_dataset(
      inputs.train, inputs.to_ids, spec, process_index, process_count,
      inputs.sources, inputs.rates))
  return Loaders(train, validation, inputs.tokenizer, spec.batch_keys(),
                 inputs.description)
