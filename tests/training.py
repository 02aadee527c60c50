"""Training helpers shared by the tests: small run configs, batches, the
metrics a run wrote, a SIGTERM after a chosen step."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_lm_config(arg: str, changes=()):
  """configs/lm.py's config for `arg`, with overrides (overrides.load)."""
  from iiet_jax import overrides
  return overrides.load(f"{ROOT / 'configs' / 'lm.py'}:{arg}", changes)


def tiny_training_config(arch: str = "iiet", mesh=(1, 1, 1),
                         preset: str = "dp", **model):
  cfg = load_lm_config(f"model={arch},size=tiny")
  cfg.model.update(dict(num_layers=2, d_model=32, num_heads=4, d_ff=64,
                        vocab_size=128, iterations=2))
  cfg.model.update(model)
  cfg.batch_size, cfg.seq_len = 8, 16
  cfg.total_steps = 10
  cfg.optimizer.warmup_steps = 1
  cfg.optimizer.peak_lr = 1e-2      # large enough that steps move parameters
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh
  cfg.sharding.preset = preset
  return cfg


def batches(cfg, steps: int, seed: int = 0, masked: bool = False):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(steps):
    b = {"tokens": rng.integers(0, cfg.model.vocab_size,
                                (cfg.batch_size, cfg.seq_len)).astype(np.int32)}
    if masked:
      b["mask"] = (rng.random((cfg.batch_size, cfg.seq_len)) < 0.7
                   ).astype(np.int32)
    out.append(b)
  return out


def write_counting_corpus(root: Path, vocab_size: int, docs: int = 64,
                          seed: int = 0) -> tuple[str, str]:
  """Token-record train / validation files of counting sequences.

  Document tokens are start, start+1, ... (mod the vocabulary, above the
  special ids), easy enough that a tiny model's loss falls within steps.
  """
  from iiet_jax.data.sources import write_token_records
  rng = np.random.default_rng(seed)
  span = vocab_size - 3
  def doc():
    n = int(rng.integers(8, 60))
    return 3 + (int(rng.integers(0, span)) + np.arange(n)) % span
  train, val = root / "train.array_record", root / "val.array_record"
  if train.exists() and val.exists():  # Same seed, same files: keep them.
    return str(train), str(val)
  write_token_records(train, [doc() for _ in range(docs)])
  write_token_records(val, [doc() for _ in range(docs // 4)])
  return str(train), str(val)


def run_config(root: Path, arch: str = "iiet", total_steps: int = 8,
               switch_at: float = 0.0, **model):
  """A whole-run config on the counting corpus: tiny model, fast steps."""
  cfg = tiny_training_config(arch, preset="dp", **model)
  cfg.mesh.data = -1
  cfg.batch_size, cfg.seq_len = 8, 32
  cfg.total_steps, cfg.switch_at = total_steps, switch_at
  cfg.optimizer.peak_lr = 3e-3
  cfg.log_every, cfg.eval_every = 1, 4
  cfg.checkpoint.every, cfg.checkpoint.keep = 2, 10
  cfg.checkpoint.async_save = True
  train, val = write_counting_corpus(root, cfg.model.vocab_size)
  cfg.data.source = "tokens"
  cfg.data.paths, cfg.data.validation_paths = (train,), (val,)
  cfg.data.eval_batches = 2
  return cfg


def read_metrics(workdir: Path) -> tuple[dict[int, list[float]], list[dict]]:
  """({step: [train losses written, in order]}, [event records])."""
  import json
  losses: dict[int, list[float]] = {}
  events = []
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if "event" in record:
      events.append(record)
    elif record.get("split") == "train":
      losses.setdefault(record["step"], []).append(record["loss"])
  return losses, events


class stop_after:
  """Sends this process SIGTERM once `step` has been trained."""

  def __init__(self, step: int):
    self.step = step

  def __enter__(self):
    import os
    import signal
    from iiet_jax.train.writers import MetricWriters
    self._write = MetricWriters.write

    def write(writer, step, metrics, prefix="train"):
      self._write(writer, step, metrics, prefix=prefix)
      if prefix == "train" and step == self.step:
        os.kill(os.getpid(), signal.SIGTERM)
    MetricWriters.write = write

  def __exit__(self, *exc):
    from iiet_jax.train.writers import MetricWriters
    MetricWriters.write = self._write


class NoData:
  """Stands in for a run's data iterator where a test checkpoints without
  one (Checkpoints saves and restores the iterator's state with the model)."""

  def get_state(self) -> bytes:
    return b"{}"

  def set_state(self, state) -> None:
    self.state = state

  def start_prefetch(self) -> None:
    pass


def _masked_crc(data: bytes) -> int:
  from tensorboardX.crc32c import crc32c
  # TFRecord's mask, written out here so the check does not trust the writer.
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tensorboard_events(workdir):
  """Every Event in WORKDIR/tensorboard, read through TFRecord framing."""
  import struct
  from tensorboardX.proto import event_pb2
  out = []
  for path in sorted((workdir / "tensorboard").glob("events.out.*")):
    data = path.read_bytes()
    i = 0
    while i < len(data):
      header = data[i:i + 8]
      (length,) = struct.unpack("<Q", header)
      (length_crc,) = struct.unpack("<I", data[i + 8:i + 12])
      payload = data[i + 12:i + 12 + length]
      end = i + 12 + length
      (payload_crc,) = struct.unpack("<I", data[end:end + 4])
      assert length_crc == _masked_crc(header)
      assert payload_crc == _masked_crc(payload)
      i += 16 + length
      event = event_pb2.Event()
      event.ParseFromString(payload)
      out.append(event)
  return out
