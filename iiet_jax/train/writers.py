"""Where training metrics go: metrics.jsonl, TensorBoard, and the screen.

`metrics.jsonl` gets one JSON object per write, flushed at once, so nothing
written is lost on a crash; a resumed run appends to it. In a gs:// workdir
it and the TensorBoard events are uploaded every `storage.REMOTE_EVERY`
seconds, at each event line and at the end (storage.py). On a terminal the
progress is one redrawn line (bar, ETA, loss, tokens/s); in logs it is a
plain line every `log_every` steps. Non-primary hosts pass `enabled=False`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping

import jax

from iiet_jax import storage
from iiet_jax.models import registry
from iiet_jax.train import flops


def _clock(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class MetricWriters:
  """metrics.jsonl + TensorBoard event files in `workdir`, and the screen."""

  def __init__(self, workdir: str, total_steps: int, *, enabled: bool = True,
               stream=None, log_every: int = 10):
    self.enabled = enabled
    self.total_steps = total_steps
    self.log_every = max(1, log_every)
    self._stream = sys.stdout if stream is None else stream
    self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
    self._open_line = False
    self._first: tuple[int, float] | None = None
    self._closed = False
    self._workdir = os.fspath(workdir)
    # A remote event file is uploaded whole at each flush: tensorboardX's
    # own timer flushes it, not every write.
    self._remote = storage.is_remote(self._workdir)
    self._jsonl = self._tb_writer = None   # opened by the first record, so
    # a run refused before it writes (a bad resume) leaves no files behind

  @property
  def _tb(self):
    if self._tb_writer is None:
      from tensorboardX import SummaryWriter  # only the primary host needs it
      self._tb_writer = SummaryWriter(
          f"{self._workdir}/tensorboard",
          flush_secs=int(storage.REMOTE_EVERY) if self._remote else 120)
    return self._tb_writer

  def _flush_tb(self, now: bool = False) -> None:
    if now or not self._remote:
      self._tb.flush()

  def _record(self, record: dict) -> None:
    if self._jsonl is None:
      self._jsonl = storage.Appended(f"{self._workdir}/metrics.jsonl")
    self._jsonl.write(json.dumps(record) + "\n")

  def write(self, step: int, metrics: Mapping[str, float], *,
            prefix: str = "train") -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items()}
    self._record({"step": int(step), "split": prefix, **values})
    for name, value in values.items():
      self._tb.add_scalar(f"{prefix}/{name}", value, int(step))
    self._flush_tb()

  def progress(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    now = time.perf_counter()
    if self._first is None:
      self._first = (step, now)
    start_step, start_time = self._first
    eta = None
    if step > start_step:
      per_step = (now - start_time) / (step - start_step)
      eta = per_step * (self.total_steps - step)
    fields = []
    if "loss" in metrics:
      fields.append(f"loss {float(metrics['loss']):.4f}")
    if "tokens_per_s" in metrics:
      fields.append(f"{float(metrics['tokens_per_s']):,.0f} tok/s")
    if eta is not None:
      fields.append(f"ETA {_clock(eta)}")
    last = step >= self.total_steps
    if self._tty:
      done = step / max(self.total_steps, 1)
      bar = "#" * int(24 * done) + "-" * (24 - int(24 * done))
      self._stream.write(f"\r[{bar}] {step}/{self.total_steps} "
                         f"{100 * done:3.0f}%  " + "  ".join(fields))
      self._open_line = True
      if last:
        self._end_line()
    elif step == start_step or step % self.log_every == 0 or last:
      width = len(str(self.total_steps))
      self._stream.write(f"step {step:{width}d}/{self.total_steps}  "
                         + "  ".join(fields) + "\n")
    self._stream.flush()

  def event(self, step: int, text: str, show: bool = True) -> None:
    """A line for the record (and, with `show`, the screen)."""
    if not self.enabled:
      return
    if show:
      self._end_line()
      self._stream.write(f"[step {step}] {text}\n")
      self._stream.flush()
    self._record({"step": int(step), "event": text})
    self._jsonl.flush()   # events are rare and matter: uploaded at once
    self._tb.add_text("events", text, int(step))
    self._flush_tb(now=True)

  def _end_line(self) -> None:
    if self._open_line:
      self._stream.write("\n")
      self._open_line = False

  def close(self) -> None:
    if not self.enabled or self._closed:
      return
    self._closed = True
    self._end_line()
    self._stream.flush()
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb_writer is not None:
      self._tb_writer.close()


def header(config, plan, training_for, loaders) -> str:
  """The lines a run prints before its first step: model, parameters, NFE,
  phases, mesh, data and batches."""
  from iiet_jax.parallel import mesh as mesh_lib
  last = training_for(plan[-1])
  cfg = last.model.config
  iterations = (cfg.iterations if registry.get(cfg.arch).implicit_iterations
                else "-")
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  params = f"{count(last.abstract_state.params):,} ({cfg.arch})"
  if len(plan) > 1:
    first = training_for(plan[0])
    params += (f"; {count(first.abstract_state.params):,} while "
               f"{plan[0].name}")
  phases = ", then ".join(f"{p.name} for steps {p.start + 1}-{p.end}"
                          for p in plan if p.end > p.start)
  if config.init_from:
    phases += f" (parameters from {config.init_from})"
  return "\n".join([
      f"model      {config.get('variant', cfg.arch)} ({cfg.arch}, "
      f"{cfg.num_layers} layers, d={cfg.d_model}, iterations="
      f"{iterations})",
      f"parameters {params}",
      f"NFE        {sum(cfg.block_evaluations_per_layer())} block "
      f"evaluations per token ({cfg.arch})",
      f"phases     {phases}",
      f"mesh       {mesh_lib.describe(last.mesh)}, "
      f"rules={config.sharding.preset}",
      f"data       {loaders.description}",
      f"batches    {config.batch_size} x {config.seq_len} tokens, "
      f"{config.data.packing} packing, tokenizer "
      f"{loaders.tokenizer.path if loaders.tokenizer else 'none'}"])


def train_metrics(metrics, timer, training, config) -> dict:
  out = {k: float(v) for k, v in metrics.items()}
  if timer["seconds"]:
    tp = flops.throughput(training.model.config, config.seq_len,
                          timer["tokens"], timer["seconds"],
                          training.mesh.devices.size,
                          jax.devices()[0].device_kind)
    out["tokens_per_s"] = tp["tokens_per_s"]
    out["tflops_per_device"] = tp["tflops_per_device"]
    if tp["mfu"] is not None:
      out["mfu"] = tp["mfu"]
  return out
