"""Each command's flags, defined only for the command that runs, and help.

absl flags are global; defining only the running command's flags makes a
flag of another command an error ("Unknown command line flag"), and lets
`iiet COMMAND --help` show exactly the flags that command reads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

CONFIG_HELP = ("config file and variant, e.g. configs/lm.py:model=iiet,"
               "size=tiny; then --config.KEY=VALUE overrides")


@dataclasses.dataclass(frozen=True)
class Flag:
  name: str
  kind: str          # string | integer | float | bool | enum | config
  default: Any
  help: str
  choices: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Command:
  summary: str       # the one line of `iiet --help`
  usage: str
  flags: tuple[Flag, ...]


def _workdir(what: str) -> Flag:
  return Flag("workdir", "string", None, what)


_STEP = Flag("step", "integer", None, "checkpoint step (default: the newest "
             "readable one)")
_CONFIG = Flag("config", "config", None, CONFIG_HELP)

COMMANDS = {
    "train": Command(
        "train or resume a run (the default command)",
        "iiet train --config=configs/lm.py:model=iiet,size=tiny "
        "--workdir=DIR [--config.KEY=VALUE ...]",
        (_CONFIG, _workdir("run directory: checkpoints, metrics, "
                           "TensorBoard, iiet.log; an existing run is "
                           "resumed"))),
    "sweep": Command(
        "train one run per entry of the config's get_sweep()",
        "iiet sweep --config=... --workdir=ROOT [--sweep_dry_run]",
        (_CONFIG, _workdir("root folder; each run trains in ROOT/NAME"),
         Flag("sweep_dry_run", "bool", False, "print one command per run, "
              "run nothing"))),
    "influence": Command(
        "measure each IIET iteration's influence; with --tau or --budget "
        "print the E-IIET selection",
        "iiet influence --workdir=TEACHER [--batches=4] [--ablation] "
        "[--tau=0.05 | --budget=0.5]",
        (_workdir("a trained IIET run"),
         Flag("batches", "integer", 4, "validation batches to measure on"),
         Flag("ablation", "bool", False, "also measure the loss increase of "
              "stopping each iteration"),
         Flag("tau", "float", None, "selection threshold in [0, 1)"),
         Flag("budget", "float", None, "share of all iterations to keep, in "
              "(0, 1] (instead of --tau)"))),
    "distill": Command(
        "IIAD: distil an IIET teacher into an E-IIET student",
        "iiet distill --config=... --workdir=STUDENT "
        "--config.distill.teacher=DIR [--dry_run]",
        (_CONFIG, _workdir("the student's run directory"),
         Flag("dry_run", "bool", False, "measure influence and print the "
              "selection, train nothing"))),
    "generate": Command(
        "continue a prompt with a trained run",
        "iiet generate --workdir=DIR --prompt=\"def \" [--max_new_tokens=64] "
        "[--temperature=0.8 --top_k=0 --top_p=0.95 --seed=0]",
        (_workdir("a trained run"),
         Flag("prompt", "string", "", "the text to continue"),
         Flag("max_new_tokens", "integer", 64, "tokens to generate"),
         Flag("temperature", "float", 0.0, "0 = greedy"),
         Flag("top_k", "integer", 0, "0 = no top-k cut"),
         Flag("top_p", "float", 1.0, "nucleus mass"),
         Flag("seed", "integer", 0, "sampling seed"))),
    "export": Command(
        "write a Hugging Face / PyTorch folder of a trained run",
        "iiet export --workdir=DIR --out=HF_DIR [--step=N] "
        "[--dtype=bfloat16] [--overwrite]",
        (_workdir("a trained run"),
         Flag("out", "string", None, "the folder to write"), _STEP,
         Flag("dtype", "enum", "float32", "weight dtype",
              ("float32", "bfloat16")),
         Flag("max_shard_size", "string", None, "above this size (e.g. "
              "500MB; default 2GiB, export/tensor_file.py MAX_SHARD_SIZE), "
              "model-0000i-of-0000N shards with model.safetensors.index.json"),
         Flag("overwrite", "bool", False, "replace a non-empty --out"))),
    "score": Command(
        "per-token log-probabilities of a text, token ids or lm-eval samples",
        "iiet score --workdir=DIR --input=FILE.txt|ids.npy|samples.jsonl "
        "[--step=N] [--out=scores.npz]",
        (_workdir("a trained run"),
         Flag("input", "string", None, "a text file, an .npy of token ids "
              "[batch, length], or an lm-eval samples .jsonl to check"),
         _STEP, Flag("out", "string", None, "an .npz for token_ids and "
                     "logprobs"))),
    "import": Command(
        "a Hugging Face folder -> a checkpoint to warm-start from",
        "iiet import --hf=HF_DIR --workdir=NEW [--config=...] [--overwrite]",
        (Flag("hf", "string", None, "a Hugging Face folder (ours, or a "
              "Llama-style one)"),
         _workdir("the new run directory (step 0)"), _CONFIG,
         Flag("overwrite", "bool", False, "replace a non-empty --workdir"))),
    "prepare": Command(
        "tokenise a files corpus (or a data.mixture) once, in parallel, into "
        "token shards that `iiet train` with the same config reads",
        "iiet prepare --config=... --config.data.source=files "
        "--config.data.paths=GLOB [--workers=2] [--beam_options=...]",
        (_CONFIG,
         Flag("workers", "integer", 1, "worker processes on this machine "
              "(Apache Beam's local FnApiRunner; 1 runs in this process)"),
         Flag("beam_options", "string", "", "Apache Beam pipeline options "
              "for another runner instead, e.g. \"--runner=DataflowRunner "
              "--project=P --region=R --temp_location=gs://B/tmp\""))),
    "plot": Command(
        "train and validation loss curves of one or more runs in one PNG",
        "iiet plot --workdir=RUN [RUN ...] [--out=FILE.png]",
        (_workdir("a training run (more runs may follow as arguments)"),
         Flag("out", "string", None, "the PNG (default: RUN/curves.png)"))),
}


def define(command: str) -> None:
  """Defines `command`'s flags in absl's global flag set."""
  from absl import flags
  for flag in COMMANDS[command].flags:
    if flag.kind == "config":   # loaded by overrides.load, with its
      flags.DEFINE_string(flag.name, None, flag.help)   # --config.* items
    elif flag.kind == "enum":
      flags.DEFINE_enum(flag.name, flag.default, list(flag.choices),
                        flag.help)
    else:
      getattr(flags, f"DEFINE_{flag.kind}")(flag.name, flag.default,
                                            flag.help)


def overview() -> str:
  """`iiet --help`: every command with its one line."""
  width = max(map(len, COMMANDS))
  lines = ["usage: iiet COMMAND [--FLAG=VALUE ...]   (COMMAND defaults to "
           "train)", "", "commands:"]
  lines += [f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items()]
  lines += ["", "`iiet COMMAND --help` lists that command's flags. Library "
            "logs go to WORKDIR/iiet.log."]
  return "\n".join(lines)


def command_help(command: str) -> str:
  """`iiet COMMAND --help`: its usage and only its flags."""
  c = COMMANDS[command]
  width = max(len(f.name) for f in c.flags) + 2
  lines = [f"usage: {c.usage}", "", c.summary[:1].upper() + c.summary[1:] +
           ".", "", "flags:"]
  for f in c.flags:
    default = "" if f.default in (None, "", False) else \
        f" (default: {f.default})"
    choices = f" [{'|'.join(f.choices)}]" if f.choices else ""
    lines.append(f"  --{f.name:<{width}}{f.help}{choices}{default}")
  return "\n".join(lines)
