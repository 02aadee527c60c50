"""Language-model pre-training configs: architecture x size.

Run (the README's main job; tiny two-stage IIET on CPU, about 2.5 minutes:
Transformer++ for steps 1-450, then IIET for 451-600, on the tokenised Python
standard library; the first run also prepares the corpus and trains its
tokenizer, about 10 s):

  python -m iiet_jax.main --config=configs/lm.py:model=iiet,size=tiny --workdir=runs/tiny

Variants: `model` in transformer, pcformer, iiet; `size` in tiny, 55m, 340m,
740m, 1.3b (SPEC.md section 7); `init=DIR` takes the model's shape and
tokenizer from the run in DIR and starts from its weights (`from_init`). Any
field can be overridden on the command
line, e.g. `--config.model.iterations=2 --config.switch_at=0`. Expected log
for the tiny IIET: 1,068,210 parameters (1,066,112 while Transformer++), 16
block evaluations per token, the loss from about 7.6 (ln 2048) at step 1 to
near 5 at the switch, no jump there (the history starts as the inherited
Transformer++, `config.switch`), validation loss near 4.9 at the end. `get_sweep`
below gives `iiet sweep` its runs.
"""

from __future__ import annotations

import ml_collections

from iiet_jax import overrides
from iiet_jax.models import registry
from iiet_jax.models.config import WEIGHT_FIELDS
from iiet_jax.parallel import sharding

# The architectures (iiet_jax/models/registry.py).
MODELS = registry.NAMES

# layers, width, heads, MLP width, tied head (SPEC.md section 7).
SIZES = {
    "tiny": dict(num_layers=4, d_model=128, num_heads=4, d_ff=352,
                 tie_embeddings=True, vocab_size=2048, max_seq_len=256),
    "55m": dict(num_layers=12, d_model=512, num_heads=4, d_ff=1408,
                tie_embeddings=True),
    "340m": dict(num_layers=24, d_model=1024, num_heads=8, d_ff=2816,
                 tie_embeddings=True),
    "740m": dict(num_layers=24, d_model=1536, num_heads=12, d_ff=4224,
                 tie_embeddings=True),
    "1.3b": dict(num_layers=24, d_model=2048, num_heads=16, d_ff=5432,
                 tie_embeddings=False),
}

# The published sizes default to settings that fit a v5e-16 slice (16 chips,
# 15.75 GiB each) at batch 256 x 2048, found by ahead-of-time compiles
# (docs/aot_memory.md, `python bench/aot_table.py --attention=splash`): FSDP
# over every device, full remat, splash attention (attention_impl=auto on
# TPU) and 4 micro-batches fit every model at 340m, 740m and 1.3b. For
# another slice: `python -m iiet_jax.aot --config=... --topology=... --fit`.
FSDP_SIZES = ("340m", "740m", "1.3b")
FSDP_MICRO_BATCHES = 4

DEFAULT_ARG = "model=iiet,size=tiny"


def parse_arg(arg: str | None) -> dict[str, str]:
  """'model=iiet,size=tiny' -> {'model': 'iiet', 'size': 'tiny', 'init': ''}."""
  return overrides.parse_arg(
      arg, {"model": "iiet", "size": "tiny", "init": ""}, "configs/lm.py",
      f"model=NAME,size=SIZE[,init=DIR] with NAME in {', '.join(MODELS)} "
      f"and SIZE in {', '.join(SIZES)}",
      {"model": MODELS, "size": SIZES})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = parse_arg(arg or DEFAULT_ARG)
  tiny = variant["size"] == "tiny"
  config = ml_collections.ConfigDict()
  config.variant = f"model={variant['model']},size={variant['size']}"
  config.seed = 0
  config.batch_size = 8 if tiny else 256
  config.seq_len = 128 if tiny else 2048

  model = ml_collections.ConfigDict(dict(
      arch=variant["model"],
      vocab_size=32000,
      max_seq_len=2048,
      # Grouped-query attention: kv heads; unset, one per query head.
      num_kv_heads=ml_collections.config_dict.placeholder(int),
      rope_base=10000.0,
      # default | llama3; the llama3 fields are read only for "llama3".
      rope_type="default",
      rope_factor=8.0,
      rope_low_freq_factor=1.0,
      rope_high_freq_factor=4.0,
      rope_original_max_positions=8192,
      iterations=3,
      unroll_iterations=True,
      pc_order=2,
      pc_alpha_init=0.5,
      dtype="float32" if tiny else "bfloat16",
      param_dtype="float32",
      scan_layers=True,
      remat_policy="none" if tiny else "full",
      remat_save_names=(),
      # auto: splash (Pallas) on TPU, XLA elsewhere (models/attention.py).
      attention_impl="xla" if tiny else "auto",
  ))
  model.update(SIZES[variant["size"]])
  config.model = model

  config.total_steps = 600 if tiny else 30000
  # Two-stage recipe (SPEC.md 5): Transformer++ for this share of the steps,
  # then the configured IIET / PCformer. 0 trains it from the start.
  config.switch_at = 0.75 if registry.get(variant["model"]).history else 0.0
  # How the history parameters start at the switch (stages/switch_init.py):
  # history_init average (SPEC) | inherit; norm_init unit (SPEC) | fit;
  # history_lr_scale: the new parameters' learning rate x this after the
  # switch (optimizer.history_lr_scale of the IIET phase).
  config.switch = ml_collections.ConfigDict(dict(
      history_init="inherit", norm_init="unit", fit_batches=4,
      history_lr_scale=1.0))
  # How W, Wc start when IIET / PCformer trains from step 0 (switch_at=0):
  # average (SPEC.md) | inherit (W[t, t-1] = 1, Wc = I: a post-LayerNorm
  # Transformer++ at step 0; stages/switch_init.py).
  config.history_init = "average"
  config.log_every = 10 if tiny else 50       # metrics to screen and files
  config.eval_every = 100 if tiny else 1000   # validation passes
  # (a, b): a jax.profiler trace of steps a..b-1 in WORKDIR/tensorboard
  # (train/profiling.py), e.g. (100, 105) once compiled and warm; () for none.
  config.profile_steps = ()
  config.checkpoint = ml_collections.ConfigDict(dict(
      every=100 if tiny else 1000,  # also at the end, the switch and SIGTERM
      keep=3,                       # the newest K steps
      keep_best=1,                  # plus the best by validation loss
      async_save=True))
  # Warm start: parameters only, from another run's workdir (its latest
  # checkpoint). Parameter paths present on one side only are errors unless
  # they match one of these regexes.
  # `pretrain` (with the switch above) or `distill`: IIAD into E-IIET from
  # the IIET run in distill.teacher (iiet_jax/stages/distill.py).
  config.stage = "pretrain"
  config.distill = ml_collections.ConfigDict(dict(
      teacher="",            # workdir of a trained IIET run
      tau=0.05,              # keep leading iterations with influence >= tau
      budget=0.0,            # or: share of all iterations to keep (0: use tau)
      kl_weight=1.0,
      temperature=1.0,
      influence_batches=4,   # validation batches the influence is measured on
  ))
  config.init_from = ""
  config.init_allow_new = ()
  config.init_allow_dropped = ()
  config.micro_batches = 1          # gradient accumulation inside the step
  config.z_loss = 0.0
  # A non-finite loss or gradient norm (train/divergence.py): "stop" ends the
  # run before it saves (exit code 3); "skip" drops such updates, up to
  # nonfinite_max_skips in a row.
  config.nonfinite = "stop"
  config.nonfinite_max_skips = 5
  # JAX's persistent compilation cache (iiet_jax/train/compile_cache.py):
  # "auto" shares one per host (or per gs:// bucket of the workdir), so a
  # restart loads its compiled steps; a path; or "" for none.
  config.compile_cache_dir = "auto"
  config.optimizer = ml_collections.ConfigDict(dict(
      peak_lr=1e-3 if tiny else 3e-4, warmup_steps=20 if tiny else 100,
      end_lr_ratio=0.1,
      history_lr_scale=1.0,  # W, Wc, LNp, LNc (, alpha, LNrk) LR x this
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0,
      moments_dtype="float32"))
  # Per-slice mesh axis sizes (one may be -1) and the number of slices/nodes.
  fsdp = variant["size"] in FSDP_SIZES
  if fsdp:
    config.micro_batches = FSDP_MICRO_BATCHES
  config.mesh = ml_collections.ConfigDict(dict(
      data=1 if fsdp else -1, fsdp=-1 if fsdp else 1, tensor=1, slices=1))
  # Logical-axis rules (iiet_jax/parallel/sharding.py): `preset` (dp, fsdp,
  # fsdp_tp) fills `rules`, the whole table, one entry per logical name
  # (embed, heads_query, mlp_down, vocab_head, activation_batch, ...). An
  # entry is "none" (replicated), a mesh axis ("tensor") or several
  # ("fsdp,tensor"). Move one weight:
  #   --config.sharding.rules.mlp_down=tensor   (=none or ='' replicates)
  # A new preset re-derives every entry not set explicitly; entries set
  # explicitly keep their value, whatever the order of the flags.
  config.sharding = sharding.config_block("fsdp")
  config.data = data_config(tiny)
  if variant["init"]:
    from_init(config, variant["init"])
  return config


def from_init(config, source: str) -> None:
  """`init=DIR`: the model shape and tokenizer of DIR's newest checkpoint
  (e.g. a Llama folder read by `iiet import`), warm-started from it with
  switch_at=0. For model=iiet / pcformer and a Transformer++ in DIR this is
  the paper's second stage alone (iiet_jax/stages/pretrain.py)."""
  from iiet_jax import checkpoint  # read only when a checkpoint is named
  run = checkpoint.saved_run(source)
  for key in WEIGHT_FIELDS:   # what the imported weights fix
    if key in run.model:
      config.model[key] = run.model[key]
  tokenizer = run.config.get("data", {}).get("tokenizer")
  if tokenizer:
    config.data.tokenizer = tokenizer
  config.init_from = source
  config.switch_at = 0.0
  config.variant += f",init={source}"


def data_config(tiny: bool) -> ml_collections.ConfigDict:
  """Input pipeline (iiet_jax/data/): corpus, tokenizer, packing, workers."""
  return ml_collections.ConfigDict(dict(
      # stdlib | files | tfds | tokens (iiet_jax/data/sources.py).
      source="stdlib",
      # The order of the training documents (shuffle and packing); unset,
      # config.seed sets it, as it sets the initial weights. Set both to
      # cross inits with data orders.
      seed=ml_collections.config_dict.placeholder(int),
      paths=(),                 # files: files/dirs/globs; tokens: train files
      # files: several sources mixed by token share (data/mixture.py), each
      # {"paths": (...), "weight": share}; read from `iiet prepare`'s shards.
      mixture=ml_collections.ConfigDict(),
      validation_paths=(),      # tokens: validation ArrayRecord files
      text_field="text",        # jsonl field / parquet column / TFDS feature
      tfds_name="",             # tfds: e.g. "c4/en:3.1.0"
      train_split="train",
      validation_split="validation",
      data_dir="~/.cache/iiet_jax/tfds",  # prepared datasets live here
      validation_fraction=0.01,  # files / stdlib: share of documents held out
      max_files=ml_collections.config_dict.placeholder(int),
      # A SentencePiece .model or a tokenizer.json; empty trains a .model
      # of model.vocab_size pieces on up to tokenizer_sample_chars of the
      # train split, cached.
      tokenizer="",
      tokenizer_sample_chars=4_000_000 if tiny else 200_000_000,
      packing="first_fit",      # first_fit (segment ids) | concat
      packing_bins=0,           # first_fit rows filled at once; 0: per stream
      streams=0,                # fixed global batch layout; 0: one / process
      workers=0 if tiny else 4,  # multiprocess prefetch
      eval_batches=8 if tiny else 64,  # cap on one validation pass
      eval_doc_tokens=0,        # > 0: each validation document's first N
  ))


def get_sweep(arg: str | None = None) -> list[dict]:
  """`iiet sweep`: the paper's sweeps, one run per dict of overrides.

  Each architecture's `paper_sweep` (models/registry.py): IIET implicit
  iterations r = 1, 2, 3; PCformer RK order 2 and 4. Without one
  (Transformer++): the peak learning rate.
  """
  model = parse_arg(arg or DEFAULT_ARG)["model"]
  swept = registry.get(model).paper_sweep
  if swept:
    field, values = swept
    return [{f"model.{field}": v} for v in values]
  peak = get_config(arg).optimizer.peak_lr
  return [{"optimizer.peak_lr": peak * f} for f in (0.5, 1.0, 2.0)]
