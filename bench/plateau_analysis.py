"""What a plateau looks like inside: bench/plateau.py's mechanism runs read
back from their checkpoints, and the documents each data order starts with.

  python bench/plateau_analysis.py [--root=runs/plateau] [--out=docs/plateau]

For every mechanism run (IIET, data order d x init i, checkpoints every 50
steps) and every checkpoint, on the run's validation batches:
  - the rows of W and Wc (SPEC.md section 3);
  - iteration influence per layer (iiad/influence.py, the relative state
    change of each implicit iteration);
  - attention entropy per layer: the mean over query tokens and heads of
    -sum_j p_j log p_j of the attention weights, as a share of log(number of
    keys the token may attend to) (1 = uniform, 0 = one key), averaged
    over the block evaluations of the layer. Read by intercepting each
    Attention call and recomputing its softmax from the call's inputs and
    weights (the kernels never materialise it).
For Transformer++ on the mechanism orders: the attention entropy at its
kept checkpoints, for reference. For every data order: the documents that fill the first 100 steps (in the
order the shuffle hands them to the packer) with their tokens and how
repetitive they are: zlib's compressed size over the raw size (generated
tables and dumps compress to a few percent, prose and code to 25-35%).

Writes OUT/mechanism.json (commit it); bench/plateau_report.py draws it.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import plateau  # noqa: E402
from iiet_jax import runs as runs_lib  # noqa: E402
from iiet_jax.data import loader as loader_lib  # noqa: E402
from iiet_jax.iiad import influence as influence_lib  # noqa: E402
from iiet_jax.models.layers import Attention, apply_rope  # noqa: E402
from iiet_jax.train import loss as loss_lib  # noqa: E402

EARLY_STEPS = 100
EVAL_BATCHES = 4


def _entropy_interceptor(next_fun, args, kwargs, context):
  """Around Attention.__call__: sows the normalised entropy of its weights."""
  out = next_fun(*args, **kwargs)
  module = context.module
  if not isinstance(module, Attention) or context.method_name != "__call__":
    return out
  x_BTD, positions_BT, segment_ids_BT = args[:3]
  cfg = module.config
  params = module.variables["params"]
  q = jnp.einsum("btd,dnh->btnh", x_BTD, params["query"])
  k = jnp.einsum("btd,dnh->btnh", x_BTD, params["key"])
  q, k = apply_rope(q, positions_BT, cfg), apply_rope(k, positions_BT, cfg)
  k = jnp.repeat(k, cfg.num_heads // k.shape[2], axis=2)
  logits = jnp.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
  T = x_BTD.shape[1]
  allowed = jnp.tril(jnp.ones((T, T), bool))[None, None]
  if segment_ids_BT is not None:
    allowed = allowed & (segment_ids_BT[:, None, :, None]
                         == segment_ids_BT[:, None, None, :])
  logits = jnp.where(allowed, logits, -jnp.inf)
  p = jax.nn.softmax(logits, axis=-1)
  plogp = jnp.where(allowed, p * jnp.log(jnp.where(allowed, p, 1.0)), 0.0)
  keys = allowed.sum(-1)
  norm = jnp.where(keys > 1, -plogp.sum(-1) / jnp.log(jnp.maximum(keys, 2)),
                   jnp.nan)                          # [B, N, T]
  valid = keys > 1
  if segment_ids_BT is not None:
    valid = valid & (segment_ids_BT[:, None, :] > 0)
  valid = jnp.broadcast_to(valid, norm.shape)
  # Out through an ordered callback: a sow would put a collection in front
  # of IIET's iteration scan, and the layer index is not static under the
  # layer scan; the calls arrive in execution order, layer by layer.
  mean = jnp.sum(jnp.where(valid, norm, 0.0)) / jnp.maximum(valid.sum(), 1)
  jax.debug.callback(_COLLECTED.append, mean, ordered=True)
  return out


_COLLECTED: list = []


def attention_entropy(model, params, batches) -> np.ndarray:
  """[L] mean normalised attention entropy per layer over `batches`,
  averaged over each layer's block evaluations."""
  cfg = model.config
  evaluations = cfg.block_evaluations_per_layer()

  @jax.jit
  def run(p, b):
    with nn.intercept_methods(_entropy_interceptor):
      return loss_lib.forward(model, p, b)

  per_batch = []
  for batch in batches:
    _COLLECTED.clear()
    jax.block_until_ready(run(params, batch))
    jax.effects_barrier()
    values = [float(v) for v in _COLLECTED]
    if len(values) != sum(evaluations):
      raise RuntimeError(f"{len(values)} attention calls, expected "
                         f"{sum(evaluations)}")
    ends = np.cumsum(evaluations)
    per_batch.append([np.mean(values[e - n:e])
                      for e, n in zip(ends, evaluations)])
  return np.mean(per_batch, axis=0)


def checkpoint_rows(workdir: Path) -> dict:
  """W, Wc, influence and attention entropy at every checkpoint."""
  saved = runs_lib.open_model(str(workdir))
  loaders = loader_lib.make_loaders(saved.config)
  loaders.close()
  batches = loaders.validation[:EVAL_BATCHES]
  model = saved.model
  out = {"steps": [], "W": [], "Wc": [], "influence": [],
         "attention_entropy": []}
  for step in _steps(workdir):
    params = saved.params_at(step)
    history = jax.device_get(params["decoder"]["history"])
    influence = influence_lib.measure(model, params, batches)
    entropy = attention_entropy(model, params, batches)
    out["steps"].append(step)
    out["W"].append(np.round(history["weight"], 4).tolist())
    out["Wc"].append(np.round(history["weight_c"], 4).tolist())
    out["influence"].append(np.round(np.nan_to_num(
        influence.state_change), 5).tolist())
    out["attention_entropy"].append(np.round(entropy, 4).tolist())
    print(f"  step {step}: influence k=1 "
          f"{np.round(influence.state_change[:, 0], 3).tolist()}, entropy "
          f"{np.round(entropy, 3).tolist()}", flush=True)
  return out


def transformer_entropy(workdir: Path) -> dict:
  """Attention entropy of a Transformer++ run at its kept checkpoints, the
  reference for IIET's."""
  saved = runs_lib.open_model(str(workdir))
  loaders = loader_lib.make_loaders(saved.config)
  loaders.close()
  batches = loaders.validation[:EVAL_BATCHES]
  out = {"steps": [], "attention_entropy": []}
  for step in _steps(workdir):
    entropy = attention_entropy(saved.model, saved.params_at(step), batches)
    out["steps"].append(step)
    out["attention_entropy"].append(np.round(entropy, 4).tolist())
  return out


def _steps(workdir: Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                if p.name.isdigit())


def early_documents(data_seed: int) -> dict:
  """The documents the first EARLY_STEPS steps of data order `data_seed`
  are packed from, with tokens and zlib ratio; and the token-weighted
  ratio of them all."""
  import grain
  from iiet_jax import overrides
  from iiet_jax.data import sources
  config = overrides.load(plateau.CONFIG.format(system="iiet"))
  inputs = sources.open_inputs(config.data, config.model.vocab_size)
  budget = EARLY_STEPS * config.batch_size * config.seq_len
  order = grain.MapDataset.source(inputs.train).shuffle(seed=data_seed)
  docs, seen = [], 0
  for i in range(len(order)):
    record = order[i]
    tokens = int(len(inputs.to_ids(record)))
    text = record["text"]
    ratio = len(zlib.compress(text, 9)) / max(len(text), 1)
    docs.append({"id": record["id"].decode(), "tokens": tokens,
                 "zlib_ratio": round(ratio, 4)})
    seen += tokens
    if seen >= budget:
      break
  weighted = sum(d["tokens"] * d["zlib_ratio"] for d in docs) / seen
  return {"documents": docs, "tokens": seen,
          "zlib_ratio_weighted": round(weighted, 4)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", default="runs/plateau")
  parser.add_argument("--out", default="docs/plateau")
  args = parser.parse_args()
  root, out = Path(args.root).resolve(), Path(args.out)
  path = out / "mechanism.json"
  result = (json.loads(path.read_text()) if path.exists()
            else {"runs": {}, "early_documents": {}})
  for run in plateau.plan(["mechanism"]):
    if run["variant"] != "iiet" or run["name"] in result["runs"]:
      continue
    workdir = root / run["name"]
    if runs_lib.finished_summary(workdir) is None:
      print(f"{run['name']}: not finished; skipped", flush=True)
      continue
    print(f"{run['name']}:", flush=True)
    result["runs"][run["name"]] = checkpoint_rows(workdir)
    path.write_text(json.dumps(result) + "\n")
  result.setdefault("transformer", {})
  for d in plateau.MECHANISM_ORDERS:
    name = f"transformer/d{d}_i{d}"
    if name not in result["transformer"] and runs_lib.finished_summary(
        root / name) is not None:
      result["transformer"][name] = transformer_entropy(root / name)
      print(f"{name}: entropy {result['transformer'][name]}", flush=True)
  for seed in plateau.SEARCH_ORDERS:
    result["early_documents"][str(seed)] = early_documents(seed)
  path.write_text(json.dumps(result) + "\n")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
