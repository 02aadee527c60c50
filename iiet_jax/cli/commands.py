"""One handler per command: read the parsed flags, call one library
function, print. Errors are raised, never printed here (cli/__init__.py
prints them once)."""

from __future__ import annotations

import sys

from iiet_jax import overrides
from iiet_jax.cli import logs
from iiet_jax.errors import Exit, UserError


class UsageError(UserError):
  """A command line missing a flag or holding one it cannot use."""

  kind = "Usage"



def _flag(F, name: str, default):
  """A flag's value, or `default` where this command does not define it
  (distill --dry_run reuses influence without its flags)."""
  if name not in F:
    return default
  value = F[name].value
  return default if value is None else value


def _need(F, name: str, command: str, what: str) -> str:
  value = getattr(F, name)
  if value in (None, ""):
    raise UsageError(f"{command} needs --{name}: {what} (`iiet {command} "
                     f"--help` lists its flags).")
  return value


def _run_config(F, config, command: str):
  if config is None:
    raise UsageError(f"{command} needs --config, e.g. "
                     f"--config=configs/lm.py:model=iiet,size=tiny.")
  _need(F, "workdir", command, "where checkpoints and metrics go (an "
        "existing run there is resumed)")
  return config


def print_summary(s: dict) -> None:
  fmt = lambda v, f: "-" if v is None else format(v, f)
  stopped = ""
  if s["preempted"]:
    stopped = (f" (stopped by {s.get('stopped_by') or 'SIGTERM'}; rerun the "
               f"same command to resume)")
  print(f"\nsummary    {s['steps']}/{s['total_steps']} steps{stopped}")
  print(f"  train loss       {fmt(s['train_loss'], '.4f')}")
  print(f"  validation loss  {fmt(s['validation_loss'], '.4f')}  perplexity "
        f"{fmt(s['validation_perplexity'], '.1f')}")
  print(f"  tokens/s         {fmt(s['tokens_per_s'], ',.0f')}")
  g = s.get("goodput")
  if g and g["goodput"] is not None:
    parts = ", ".join(f"{k} {v:,.1f} s" for k, v in g["seconds"].items() if v)
    attempts = f" over {g['attempts']} attempts" if g["attempts"] > 1 else ""
    print(f"  goodput          {g['goodput']:.0%}{attempts} ({parts})")
  print(f"  checkpoints      {s['checkpoints']}")
  print(f"  metrics          {s['metrics']} (TensorBoard: {s['tensorboard']})")


def train(F, config, command: str = "train") -> int:
  """Returns the exit code (errors.Exit): finished, or stopped and saved."""
  from iiet_jax import preflight, stages
  from iiet_jax.parallel import multihost
  config = _run_config(F, config, command)
  if command == "distill" and F.dry_run:
    d = config.distill
    return influence(F, workdir=d.teacher, batches=d.influence_batches,
                     tau=d.tau, budget=d.budget or None)
  # Before anything touches a device: jax.distributed must start first.
  multihost.initialize()
  workdir = preflight.check_run(config, F.workdir)
  logs.attach(str(workdir))   # from when the run creates it
  summary = stages.train(config, workdir)
  print_summary(summary)
  return {None: Exit.FINISHED, "SIGTERM": Exit.PREEMPTED,
          "Ctrl-C": Exit.INTERRUPTED}[summary.get("stopped_by")]


def distill(F, config) -> int:
  return train(F, config, "distill")


def sweep(F, config) -> None:
  from iiet_jax import sweep as sweep_lib
  _run_config(F, config, "sweep")
  extra = overrides.config_args(sys.argv[1:])
  sys.exit(sweep_lib.sweep(overrides.config_spec(sys.argv), F.workdir, extra,
                           F.sweep_dry_run))


def influence(F, workdir=None, batches=None, tau=None, budget=None) -> None:
  from iiet_jax.iiad import report, teacher
  workdir = workdir or _need(F, "workdir", "influence", "a trained IIET run")
  tau = _flag(F, "tau", None) if tau is None else tau
  budget = _flag(F, "budget", None) if budget is None else budget
  ablation = _flag(F, "ablation", False)
  m = teacher.measure_run(
      workdir, batches or _flag(F, "batches", 4), ablation, tau, budget,
      progress=lambda t, k: print(f"  ablation layer {t + 1} iteration {k}",
                                  flush=True))
  print(f"teacher    {workdir} step {m.step}: iterations {m.iterations}; "
        f"{m.batches} validation batches")
  print(report.table(m.influence.state_change, "influence (relative state "
                     "change, SPEC.md 5)"))
  if m.influence.ablation is not None:
    print(report.table(m.influence.ablation, "influence (loss increase when "
                       "the layer stops one iteration earlier)"))
  s = m.result.get("selection")
  if s:
    print(f"selection  tau={s['tau']:.4g}: r_t = {s['iterations']}")
    print(f"           block evaluations per token {s['block_evaluations']} "
          f"(teacher {s['teacher_block_evaluations']}); predicted decode cost "
          f"{100 * s['predicted_cost_ratio']:.1f}% of the teacher's "
          f"(analytic FLOPs per token)")
  if m.figure_error:
    print(f"written    {m.written[0]}; no influence.png: {m.figure_error}")
  else:
    print(f"written    {', '.join(m.written)}")
  logs.attach(str(workdir))


def generate(F) -> None:
  from iiet_jax import runs
  workdir = _need(F, "workdir", "generate", "a trained run")
  print(runs.generate(workdir, F.prompt, F.max_new_tokens, F.temperature,
                      F.top_k, F.top_p, F.seed))
  logs.attach(workdir)


def export(F) -> None:
  from iiet_jax.export import hf_folder
  workdir = _need(F, "workdir", "export", "a trained run")
  out = _need(F, "out", "export", "the folder to write")
  out = hf_folder.export(workdir, out, F.step, F.dtype, F.overwrite,
                         F.max_shard_size)
  print(f"exported   {workdir} -> {out}")
  logs.attach(workdir)


def score(F) -> None:
  from iiet_jax.export.score import score as score_run
  workdir = _need(F, "workdir", "score", "a trained run")
  _need(F, "input", "score", "a text file, an .npy of token ids or an "
        "lm-eval samples .jsonl")
  r = score_run(workdir, F.input, F.step, F.out)
  if "lm_eval" in r:
    e = r["lm_eval"]
    print(f"lm-eval    {e['requests']} requests of {e['documents']} "
          f"documents (step {r['step']}): accuracy {e['accuracy']:.4f} "
          f"by our log-likelihoods; max |ours - lm-eval| "
          f"{e['max_abs_diff']:.2e}")
  else:
    print(f"scored     {r['tokens_scored']:,} tokens in {r['rows']} rows "
          f"(step {r['step']}): mean NLL {r['mean_nll']:.4f}, perplexity "
          f"{r['perplexity']:.2f}" + (f"; written {r['out']}"
                                     if F.out else ""))
  logs.attach(workdir)


def import_hf(F, config) -> None:
  from iiet_jax.export import hf_folder
  hf = _need(F, "hf", "import", "a Hugging Face folder")
  workdir = _need(F, "workdir", "import", "the new run directory")
  out = hf_folder.import_folder(hf, workdir, config, F.overwrite)
  print(f"imported   {hf} -> {out} (step 0); continue training with "
        f"--config.init_from={out}")
  if not any((out / n).is_file() for n in ("tokenizer.model",
                                           "tokenizer.json")):
    print(f"warning    {hf} has no tokenizer.model or tokenizer.json: runs "
          f"from {out} tokenise with their own config.data.tokenizer (set it "
          f"to the model's tokenizer, or use data.source=tokens).")
  logs.attach(str(out))


def plot(F, more_runs: list[str]) -> None:
  from iiet_jax import plots
  _need(F, "workdir", "plot", "a training run (more may follow)")
  runs = [F.workdir, *more_runs]
  out = plots.training_curves(runs, F.out)
  print(f"plotted    {len(runs)} run(s) -> {out}")


# A command with a --config flag (cli/flags.py) gets the loaded config too.
def prepare(F, config) -> None:
  import shlex
  from iiet_jax.data import prepare as prepare_lib
  if config is None:
    raise UsageError("prepare needs --config: the run config whose data "
                     "block names the corpus, e.g. --config=configs/lm.py:"
                     "model=iiet,size=tiny --config.data.source=files "
                     "--config.data.paths=/data/*.jsonl.zst.")
  from iiet_jax.data import token_shards
  # The log (Beam's workers' lines included) goes beside the shards.
  logs.attach(str(token_shards.location(config.data)))
  folder = prepare_lib.prepare(config.data, config.model.vocab_size,
                               F.workers, shlex.split(F.beam_options))
  print(f"prepared   {folder}\n  `iiet train` with the same --config "
        f"flags reads it.")


HANDLERS = {"train": train, "prepare": prepare, "sweep": sweep, "influence": influence,
            "distill": distill, "generate": generate, "export": export,
            "score": score, "import": import_hf}
