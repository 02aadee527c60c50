"""Command line: `iiet COMMAND` (or `python -m iiet_jax.main COMMAND`).

  iiet train --config=configs/lm.py:model=iiet,size=tiny --workdir=DIR \
      [--config.KEY=VALUE ...]             (the default command)
  iiet sweep --config=... --workdir=ROOT [--sweep_dry_run]
  iiet influence --workdir=TEACHER [--batches=4] [--ablation]
      [--tau=0.05 | --budget=0.5]          (prints the E-IIET selection)
  iiet distill --config=... --workdir=STUDENT --config.distill.teacher=DIR
      [--dry_run]                          (IIAD; --dry_run only selects)
  iiet generate --workdir=DIR --prompt="def " [--max_new_tokens=64]
      [--temperature=0.8 --top_k=0 --top_p=0.95 --seed=0]
  iiet export --workdir=DIR --out=HF_DIR [--step=N] [--dtype=bfloat16]
      [--overwrite]                        (Hugging Face / PyTorch folder)
  iiet score --workdir=DIR --input=FILE.txt|ids.npy [--step=N]
      [--out=scores.npz]                   (per-token log-probabilities)
  iiet import --hf=HF_DIR --workdir=NEW [--config=...] [--overwrite]
                                           (then train with init_from=NEW)
  iiet plot --workdir=RUN [RUN ...] [--out=FILE.png]
                                           (loss curves; default RUN/curves.png)

`train` runs or resumes the configured run in `--workdir`
(iiet_jax/train/loop.py) and prints a summary at the end; `distill` is
`train` with `--config.stage=distill`.
"""

from __future__ import annotations

import functools
import sys

from absl import app, flags
from ml_collections import config_flags

from iiet_jax import hostenv, overrides

COMMANDS = ("train", "sweep", "influence", "distill", "generate", "export",
            "score", "import", "plot")
SAVED_RUN_COMMANDS = ("influence", "generate", "export", "score")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/lm.py:model=iiet,size=tiny.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints, metrics, TensorBoard. An "
    "existing one is resumed.")
_SWEEP_DRY_RUN = flags.DEFINE_bool(
    "sweep_dry_run", False, "sweep: print one command per run, run nothing.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "distill: measure influence and print the selection, "
    "train nothing.")
_BATCHES = flags.DEFINE_integer("batches", 4, "influence: validation batches.")
_ABLATION = flags.DEFINE_bool("ablation", False, "influence: also measure "
                              "the loss increase of stopping each iteration.")
_TAU = flags.DEFINE_float("tau", None, "influence: selection threshold.")
_BUDGET = flags.DEFINE_float("budget", None, "influence: share of all "
                             "iterations to keep (instead of --tau).")
_PROMPT = flags.DEFINE_string("prompt", "", "generate: the text to continue.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "generate: length.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "generate: 0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "generate: 0 = no top-k cut.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "generate: nucleus mass.")
_SEED = flags.DEFINE_integer("seed", 0, "generate: sampling seed.")
_STEP = flags.DEFINE_integer("step", None, "export / score: the checkpoint "
                             "step (default: the newest).")
_OUT = flags.DEFINE_string("out", None, "export: the folder to write; "
                           "score: an .npz for token_ids and logprobs; "
                           "plot: the PNG (default: RUN/curves.png).")
_EXPORT_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                                  "export: weight dtype.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "export / import: replace "
                               "a non-empty output folder.")
_INPUT = flags.DEFINE_string("input", None, "score: a text file, an .npy "
                             "of token ids [batch, length], or an lm-eval "
                             "samples .jsonl to check.")
_HF = flags.DEFINE_string("hf", None, "import: a Hugging Face folder.")


def print_summary(s: dict) -> None:
  fmt = lambda v, f: "-" if v is None else format(v, f)
  print(f"\nsummary    {s['steps']}/{s['total_steps']} steps"
        f"{' (stopped by SIGTERM; rerun to resume)' if s['preempted'] else ''}")
  print(f"  train loss       {fmt(s['train_loss'], '.4f')}")
  print(f"  validation loss  {fmt(s['validation_loss'], '.4f')}  perplexity "
        f"{fmt(s['validation_perplexity'], '.1f')}")
  print(f"  tokens/s         {fmt(s['tokens_per_s'], ',.0f')}")
  print(f"  checkpoints      {s['checkpoints']}")
  print(f"  metrics          {s['metrics']} (TensorBoard: {s['tensorboard']})")


def main(argv, command: str) -> None:
  if command == "plot":
    return plot(argv[1:])
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if command in SAVED_RUN_COMMANDS:
    if not _WORKDIR.value:
      raise app.UsageError(f"{command} needs --workdir: a trained run.")
    return run_on_saved(command)
  if command == "import":
    return import_hf()
  if _CONFIG.value is None:
    raise app.UsageError(
        "--config is required, e.g. --config=configs/lm.py:model=iiet,size=tiny")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required: where checkpoints and "
                         "metrics go (an existing run there is resumed).")
  if command == "sweep":
    from iiet_jax import sweep
    extra = [a for a in sys.argv[1:] if a.startswith("--config.")]
    try:
      sys.exit(sweep.sweep(overrides.config_spec(sys.argv), _WORKDIR.value,
                           extra, _SWEEP_DRY_RUN.value))
    except overrides.OverrideError as err:
      sys.exit(f"Config error: {err}")

  from iiet_jax import checkpoint
  from iiet_jax.data.documents import CorpusError
  from iiet_jax.data.pipeline import PipelineError
  from iiet_jax.data.tokenizer import TokenizerError
  from iiet_jax.models import ConfigError
  from iiet_jax.parallel import multihost
  from iiet_jax.parallel.mesh import MeshError
  from iiet_jax.parallel.sharding import ShardingError
  from iiet_jax.iiad.influence import InfluenceError
  from iiet_jax.iiad.selection import SelectionError
  from iiet_jax.stages.distill import DistillError
  from iiet_jax.stages.merge import MergeError
  from iiet_jax.stages.pretrain import PlanError
  from iiet_jax.train import loop
  from iiet_jax.train.profiling import ProfileError

  multihost.initialize()
  if command == "distill" and _DRY_RUN.value:
    d = _CONFIG.value.distill
    return run_on_saved("influence", workdir=d.teacher,
                        batches=d.influence_batches, tau=d.tau,
                        budget=d.budget or None)
  try:
    summary = loop.train(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, MeshError, ShardingError, PlanError,
          ProfileError) as err:
    sys.exit(f"Config error: {err}")
  except (CorpusError, PipelineError, TokenizerError, FileNotFoundError) as err:
    sys.exit(f"Data error: {err}")
  except (checkpoint.CheckpointError, MergeError) as err:
    sys.exit(f"Checkpoint error: {err}")
  except (DistillError, InfluenceError, SelectionError) as err:
    sys.exit(f"Distill error: {err}")
  print_summary(summary)


def run_on_saved(command: str, workdir: str | None = None, batches=None,
                 tau=None, budget=None) -> None:
  """influence / generate: commands that read a finished run."""
  from iiet_jax import checkpoint, commands
  from iiet_jax.iiad.influence import InfluenceError
  from iiet_jax.iiad.selection import SelectionError
  from iiet_jax.decode import GenerateError
  from iiet_jax.export.names import ExportError
  from iiet_jax.export.score import ScoreError
  workdir = workdir or _WORKDIR.value
  try:
    if command == "export":
      if not _OUT.value:
        raise app.UsageError("export needs --out: the folder to write.")
      from iiet_jax.export import hf_folder
      out = hf_folder.export(workdir, _OUT.value, _STEP.value,
                               _EXPORT_DTYPE.value, _OVERWRITE.value)
      print(f"exported   {workdir} -> {out}")
    elif command == "score":
      if not _INPUT.value:
        raise app.UsageError("score needs --input: a text file or .npy.")
      from iiet_jax.export.score import score
      r = score(workdir, _INPUT.value, _STEP.value, _OUT.value)
      if "lm_eval" in r:
        e = r["lm_eval"]
        print(f"lm-eval    {e['requests']} requests of {e['documents']} "
              f"documents (step {r['step']}): accuracy {e['accuracy']:.4f} "
              f"by our log-likelihoods; max |ours - lm-eval| "
              f"{e['max_abs_diff']:.2e}")
        return
      print(f"scored     {r['tokens_scored']:,} tokens in {r['rows']} rows "
            f"(step {r['step']}): mean NLL {r['mean_nll']:.4f}, perplexity "
            f"{r['perplexity']:.2f}" + (f"; written {r['out']}"
                                       if _OUT.value else ""))
    elif command == "influence":
      commands.influence(workdir, batches or _BATCHES.value, _ABLATION.value,
                         _TAU.value if tau is None else tau,
                         _BUDGET.value if budget is None else budget)
    else:
      print(commands.generate(workdir, _PROMPT.value, _MAX_NEW.value,
                              _TEMPERATURE.value, _TOP_K.value, _TOP_P.value,
                              _SEED.value))
  except (checkpoint.CheckpointError, FileNotFoundError, InfluenceError,
          SelectionError, GenerateError, ExportError, ScoreError,
          ValueError) as err:
    sys.exit(f"{command} error: {err}")


def import_hf() -> None:
  """import: a Hugging Face folder -> a checkpoint in --workdir."""
  from iiet_jax.export import hf_folder
  from iiet_jax.export.names import ExportError
  from iiet_jax.models import ConfigError
  if not _HF.value or not _WORKDIR.value:
    raise app.UsageError("import needs --hf=HF_DIR and --workdir=NEW.")
  spec = overrides.config_spec(sys.argv)
  try:
    out = hf_folder.import_folder(_HF.value, _WORKDIR.value, spec,
                                     _OVERWRITE.value)
  except (ExportError, ConfigError, OSError) as err:
    sys.exit(f"import error: {err}")
  print(f"imported   {_HF.value} -> {out} (step 0); continue training with "
        f"--config.init_from={out}")
  if not (out / "tokenizer.model").is_file():
    print(f"warning    {_HF.value} has no SentencePiece tokenizer.model: "
          f"runs from {out} tokenise with their own config.data.tokenizer "
          f"(set it to the model's tokenizer, or use data.source=tokens).")


def plot(more_runs: list[str]) -> None:
  """plot: --workdir=RUN and any further RUNs -> one PNG of loss curves."""
  from iiet_jax import plots
  if not _WORKDIR.value:
    raise app.UsageError("plot needs --workdir=RUN [RUN ...]: training runs.")
  runs = [_WORKDIR.value, *more_runs]
  try:
    out = plots.training_curves(runs, _OUT.value)
  except (plots.PlotError, OSError) as err:
    sys.exit(f"plot error: {err}")
  print(f"plotted    {len(runs)} run(s) -> {out}")


def run(argv: list[str] | None = None) -> None:
  """Console script `iiet`: `iiet [train|sweep] --config=... --workdir=...`."""
  if argv is None:  # the process entry point, not a call from Python
    hostenv.reexec_with_huge_pages()
  argv = list(sys.argv if argv is None else argv)
  command = "train"
  if len(argv) > 1 and not argv[1].startswith("-"):
    command = argv.pop(1)
    if command not in COMMANDS:
      sys.exit(f"Unknown command {command!r}; choose one of "
               f"{', '.join(COMMANDS)}.")
    if command == "distill":
      argv.append("--config.stage=distill")
  spec = overrides.config_spec(argv)
  keys = overrides.override_keys(argv)
  if spec and keys:
    try:
      overrides.check_keys(overrides.load_config_file(spec)[0], keys)
    except overrides.OverrideError as err:
      sys.exit(f"Config error: {err}")
  sys.argv = argv
  app.run(functools.partial(main, command=command), argv=argv)


if __name__ == "__main__":
  run()
