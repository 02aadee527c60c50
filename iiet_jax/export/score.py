"""`iiet score`: per-token log-probabilities of a text or of token ids.

Input: a `.npy` array of token ids [batch, length] scored as given, or a text
file, tokenised with the run's tokenizer as <s> + text and cut into rows of
the model's context (each row scored on its own). Output: logprobs[b, i] =
log p(token_ids[b, i + 1] | token_ids[b, :i + 1]); `mask` marks real
entries (text rows are padded). The model runs in float32 whatever it
trained in, which is what an exported float32 PyTorch model is compared to.

A third input kind checks lm-evaluation-harness: its `--log_samples` file
(samples_TASK_*.jsonl) of log-likelihood requests. Every (context,
continuation) is tokenised the way lm-eval's HF model does (trailing spaces
of the context move to the continuation; <s> + context + continuation and
<s> + context encoded separately, the continuation being the tokens of the
first past the length of the second, scored after the second),
scored here, and compared with the log-likelihood lm-eval recorded.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from iiet_jax.models import build_model
from iiet_jax.errors import UserError


class ScoreError(UserError, ValueError):
  """An input that cannot be scored."""

  kind = "Score"


def next_token_logprobs(model, params, tokens_BT) -> np.ndarray:
  """[B, T-1] float32: log p(tokens[:, i + 1] | tokens[:, :i + 1])."""
  @jax.jit
  def run(params, tokens):
    logits = model.apply({"params": params}, tokens)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
    return jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
  return np.asarray(run(params, jnp.asarray(tokens_BT, jnp.int32)))


def _rows(path: Path, tokenizer, max_len: int, vocab: int):
  if path.suffix == ".npy":
    tokens = np.load(path)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
      raise ScoreError(f"{path}: expected integer token ids [batch, length],"
                       f" got {tokens.dtype} {tokens.shape}.")
    if tokens.shape[1] < 2 or tokens.shape[1] > max_len:
      raise ScoreError(f"{path}: length {tokens.shape[1]} must lie in "
                       f"[2, {max_len}] (the model's context).")
    if tokens.min() < 0 or tokens.max() >= vocab:
      raise ScoreError(f"{path}: token ids must lie in [0, {vocab}); found "
                       f"{tokens.min()}..{tokens.max()}.")
    return tokens.astype(np.int32), np.ones(tokens.shape, bool)
  text = path.read_text(encoding="utf-8", errors="replace")
  ids = [tokenizer.bos_id, *tokenizer.encode(text)]
  if len(ids) < 2:
    raise ScoreError(f"{path} holds no text to score.")
  rows = math.ceil(len(ids) / max_len)
  tokens = np.full((rows, min(max_len, len(ids))), tokenizer.pad_id,
                   np.int32)
  mask = np.zeros(tokens.shape, bool)
  for r in range(rows):
    piece = ids[r * max_len:(r + 1) * max_len]
    tokens[r, :len(piece)] = piece
    mask[r, :len(piece)] = True
  return tokens, mask


def lm_eval_requests(path: Path) -> list[dict]:
  """The log-likelihood requests of an lm-eval samples file, with the
  log-likelihood lm-eval computed for each."""
  requests = []
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    if not line.strip():
      continue
    try:
      sample = json.loads(line)
      for i, (key, args) in enumerate(sorted(sample["arguments"].items())):
        del key
        requests.append({"doc_id": sample["doc_id"], "choice": i,
                         "target": sample.get("target"),
                         "context": args["arg_0"],
                         "continuation": args["arg_1"],
                         "lm_eval": float(sample["resps"][i][0][0])})
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
      what = (f"not JSON ({err})" if isinstance(err, json.JSONDecodeError)
              else f"not an lm-eval sample (missing or malformed {err})")
      raise ScoreError(
          f"{path} line {number} is {what}; --input takes the "
          f"samples_TASK_*.jsonl that lm-eval writes with --log_samples.") \
          from None
  if not requests:
    raise ScoreError(f"{path} holds no lm-eval samples.")
  return requests


def lm_eval_tokens(tokenizer, context: str, continuation: str):
  """(context ids, continuation ids) as lm-eval's HF model encodes them."""
  spaces = len(context) - len(context.rstrip())
  if spaces:
    context, continuation = context[:-spaces], context[-spaces:] + \
        continuation
  bos = [tokenizer.bos_id]
  if not context:
    return bos, tokenizer.encode(continuation)
  whole = bos + tokenizer.encode(context + continuation)
  context_ids = bos + tokenizer.encode(context)
  return context_ids, whole[len(context_ids):]


def loglikelihoods(model, params, tokenizer, requests) -> np.ndarray:
  """Sum of log p(continuation | context) for every request."""
  pairs = [lm_eval_tokens(tokenizer, r["context"], r["continuation"])
           for r in requests]
  length = max(len(c) + len(x) for c, x in pairs)
  tokens = np.full((len(pairs), length), tokenizer.pad_id, np.int32)
  for row, (c, x) in enumerate(pairs):
    tokens[row, :len(c) + len(x)] = c + x
  logprobs = next_token_logprobs(model, params, tokens)
  return np.asarray([logprobs[row, len(c) - 1:len(c) + len(x) - 1].sum()
                     for row, (c, x) in enumerate(pairs)], np.float64)


def score_lm_eval(model, params, tokenizer, path: Path, out) -> dict:
  requests = lm_eval_requests(path)
  ours = loglikelihoods(model, params, tokenizer, requests)
  theirs = np.asarray([r["lm_eval"] for r in requests])
  docs: dict = {}
  for r, ll in zip(requests, ours):
    docs.setdefault(r["doc_id"], (r["target"], []))[1].append(ll)
  correct = [str(int(np.argmax(lls))) == str(target)
             for target, lls in docs.values()]
  if out:
    np.savez(out, loglikelihoods=ours, lm_eval_loglikelihoods=theirs)
  return {"requests": len(requests), "documents": len(docs),
          "accuracy": float(np.mean(correct)),
          "max_abs_diff": float(np.abs(ours - theirs).max())}


def score(workdir: str, input_path: str, step: int | None = None,
          out: str | None = None) -> dict:
  from iiet_jax.runs import open_model
  path = Path(input_path)
  if not path.is_file():
    raise ScoreError(f"--input={input_path} is not a file.")
  saved = open_model(workdir, step=step)
  cfg = dataclasses.replace(saved.model.config, dtype="float32")
  if path.suffix == ".jsonl":
    result = score_lm_eval(build_model(cfg), saved.params,
                           saved.tokenizer(), path, out)
    return {"workdir": workdir, "step": saved.step, "lm_eval": result,
            **({"out": out} if out else {})}
  tokenizer = None if path.suffix == ".npy" else saved.tokenizer()
  tokens, mask = _rows(path, tokenizer, cfg.max_seq_len, cfg.vocab_size)
  logprobs = next_token_logprobs(build_model(cfg), saved.params, tokens)
  scored = mask[:, 1:]
  logprobs = np.where(scored, logprobs, 0.0).astype(np.float32)
  count = int(scored.sum())
  nll = float(-logprobs.sum() / count)
  result = {"workdir": workdir, "step": saved.step, "rows": len(tokens),
            "tokens_scored": count, "mean_nll": nll,
            "perplexity": math.exp(nll)}
  if out:
    np.savez(out, token_ids=tokens, logprobs=logprobs, mask=scored)
    result["out"] = out
  return result
