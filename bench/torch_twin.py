"""The PyTorch twin of a JAX model, trained the way bench/train_throughput.py
times it, and the child process the bench runs the twins in.

The twin is the model an export of the JAX one loads as: stock
`transformers` LlamaForCausalLM for Transformer++, our iiet_jax/pytorch
IIETForCausalLM for IIET, E-IIET and PCformer. Its config is the export's
config.json (`export.names.hf_config`) and its weights are the JAX
parameters carried over by `export.names.to_hf`, so both sides start from
the same point. One train step, float32: next-token cross-entropy on the
batch, `loss.backward()`, global-norm clipping (the JAX step clips too),
`torch.optim.AdamW` with the run's hyper-parameters at the peak learning rate
and the JAX decay mask (block projections and an untied head decay; norms,
history, alpha and embedding do not), `zero_grad`.

`spec_of` turns a JAX model into what builds its twin (config.json, the HF
state dict, the batch, the AdamW settings) as plain Python and NumPy, so a
process without JAX can build it. `Worker` starts this file as such a child
process: it imports torch, transformers and iiet_jax/pytorch only, never
JAX, sets `torch.set_num_threads`, and builds twins and times their steps
when the parent asks, answering with step times measured in the child or
with the traceback of what failed there. The parent waits while the child
works and the child waits while the parent works, so XLA's and PyTorch's
thread pools never compete for the cores.

Only this file imports torch, and only inside functions (or in the child):
without the `torch` extra the bench still runs its JAX rows (`missing()` says
why not these).
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import signal
import subprocess
import sys
import time
import traceback
from multiprocessing.connection import Connection

import numpy as np

# Parameter names that decay, as iiet_jax/train/optimizer.py DECAYED does.
DECAYED = ("_proj.weight", "lm_head.weight")
# The AdamW settings a twin reads off the run's `optimizer` config.
OPT_FIELDS = ("peak_lr", "b1", "b2", "eps", "weight_decay", "clip_norm")


def missing() -> str | None:
  """None when torch and transformers are installed, else what is missing.

  Looks the packages up without importing them: the bench's own process
  never loads torch, its worker does."""
  for name in ("torch", "transformers"):
    if importlib.util.find_spec(name) is None:
      return (f"No module named '{name}'; PyTorch rows need the torch extra: "
              f"pip install -e '.[torch]'")
  return None


def spec_of(cfg, params, tokens, opt) -> dict:
  """What builds the twin of ModelConfig `cfg` holding JAX `params`, trained
  on `tokens` with the AdamW settings of `opt`: plain Python and NumPy."""
  import jax
  from iiet_jax.export import names
  tensors = names.to_hf(jax.device_get(params), cfg)
  return {"arch": cfg.arch, "tied": cfg.tie_embeddings,
          "hf_config": names.hf_config(cfg),
          "tensors": {k: np.array(v, np.float32) for k, v in tensors.items()},
          "tokens": np.array(tokens, np.int64),
          "opt": {k: float(getattr(opt, k)) for k in OPT_FIELDS}}


def build(spec: dict):
  """The PyTorch model of `spec` (from `spec_of`), in train mode."""
  import torch
  if spec["arch"] == "transformer":
    from transformers import LlamaConfig, LlamaForCausalLM
    model = LlamaForCausalLM(LlamaConfig.from_dict(spec["hf_config"]))
  else:
    from iiet_jax.pytorch.configuration_iiet import IIETConfig
    from iiet_jax.pytorch.modeling_iiet import IIETForCausalLM
    model = IIETForCausalLM(IIETConfig.from_dict(spec["hf_config"]))
  result = model.load_state_dict(
      {k: torch.from_numpy(v) for k, v in spec["tensors"].items()},
      strict=False)
  tied = {"lm_head.weight"} if spec["tied"] else set()
  if set(result.missing_keys) != tied or result.unexpected_keys:
    raise ValueError(f"PyTorch twin of {spec['arch']}: missing "
                     f"{result.missing_keys}, unexpected "
                     f"{result.unexpected_keys}")
  if spec["tied"]:
    assert model.lm_head.weight is model.model.embed_tokens.weight
  return model.float().train()


def timed(step, n: int) -> list[float]:
  """Runs `step` `n` times; the seconds each call took."""
  times = []
  for _ in range(n):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return times


class TorchRun:
  """The twin, its AdamW and the fixed batch; `step()` is one train step."""

  def __init__(self, spec: dict):
    import torch
    self.model = build(spec)
    named = list(self.model.named_parameters())  # a tied head appears once
    decay = [p for n, p in named if n.endswith(DECAYED)]
    rest = [p for n, p in named if not n.endswith(DECAYED)]
    self.params = [p for _, p in named]
    opt = spec["opt"]
    self.clip_norm = opt["clip_norm"]
    self.optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt["weight_decay"]},
         {"params": rest, "weight_decay": 0.0}],
        lr=opt["peak_lr"], betas=(opt["b1"], opt["b2"]), eps=opt["eps"])
    self.tokens = torch.from_numpy(spec["tokens"])

  @classmethod
  def from_jax(cls, cfg, params, tokens, opt) -> "TorchRun":
    """The twin of ModelConfig `cfg` holding JAX `params`, in this process."""
    return cls(spec_of(cfg, params, tokens, opt))

  @property
  def param_count(self) -> int:
    return sum(p.numel() for p in self.params)

  def loss(self):
    """Mean next-token cross-entropy of the batch (a 0-d tensor)."""
    import torch.nn.functional as F
    logits = self.model(self.tokens, use_cache=False).logits.float()
    return F.cross_entropy(logits[:, :-1].flatten(0, 1),
                           self.tokens[:, 1:].flatten())

  def step(self) -> float:
    """One train step; returns the loss before it."""
    import torch
    loss = self.loss()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    return loss.item()

  def timed_steps(self, n: int) -> list[float]:
    return timed(self.step, n)


class WorkerError(RuntimeError):
  """The worker failed a request (its traceback is the message) or died."""


class Worker:
  """A child process holding PyTorch twins by name; a context manager.

  `build(name, spec)` makes a twin there (returns its parameter count),
  replacing any of that name; `steps(name, n)` runs n train steps of it
  there and returns the seconds each took, measured there.
  Each call blocks until the child answers. Leaving the `with` block, on an
  error too, stops the child.
  """

  def __init__(self, threads: int):
    ours, theirs = multiprocessing.Pipe()
    try:
      # The child's stdout goes to our stderr: our stdout ends in the JSON.
      self.process = subprocess.Popen(
          [sys.executable, __file__, str(theirs.fileno()), str(threads)],
          pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=2)
    except BaseException:
      ours.close()
      raise
    finally:
      theirs.close()  # the child's copy alone: its exit is our EOF
    self.conn = ours

  def __enter__(self) -> "Worker":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def build(self, name: str, spec: dict) -> int:
    return self._ask("build", name, spec)

  def steps(self, name: str, n: int) -> list[float]:
    return self._ask("steps", name, n)

  def _ask(self, *request):
    try:
      self.conn.send(request)
      status, value = self.conn.recv()
    except (EOFError, OSError) as err:
      raise WorkerError(f"The PyTorch worker died (exit status "
                        f"{self._exit_status()}) during {request[0]} "
                        f"{request[1]!r}; its stderr is above.") from err
    if status == "error":
      raise WorkerError(f"The PyTorch worker failed {request[0]} "
                        f"{request[1]!r}:\n{value}")
    return value

  def _exit_status(self):
    try:
      return self.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      return None

  def close(self, timeout: float = 30) -> None:
    """Asks the child to stop, and kills it if it has not within `timeout`."""
    if self.conn.closed:
      return
    try:
      self.conn.send(("stop",))
    except OSError:
      pass  # already gone
    self.conn.close()
    try:
      self.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.process.wait()


def answer(runs: dict, command: str, name: str, arg):
  """The worker's answer to one request (see `Worker`)."""
  if command == "build":
    runs.pop(name, None)  # a twin of the same row at another size goes first
    runs[name] = TorchRun(arg)
    return runs[name].param_count
  if command == "steps":
    if name not in runs:
      raise KeyError(f"no twin {name!r} built; built: {sorted(runs)}")
    return runs[name].timed_steps(arg)
  raise ValueError(f"unknown request {command!r}")


def serve(conn: Connection, threads: int) -> None:
  """The worker's loop: answers requests until "stop" or the parent's end of
  the pipe closes. A failed request answers ("error", its traceback)."""
  import torch
  torch.set_num_threads(threads)
  runs = {}
  while True:
    try:
      request = conn.recv()
    except EOFError:
      return
    if request[0] == "stop":
      return
    try:
      reply = ("ok", answer(runs, *request))
    except Exception:  # noqa: BLE001 - the parent reports it
      reply = ("error", traceback.format_exc())
    try:
      conn.send(reply)
    except OSError:
      return  # the parent has gone


if __name__ == "__main__":
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
  serve(Connection(int(sys.argv[1])), int(sys.argv[2]))
