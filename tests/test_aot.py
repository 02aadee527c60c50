"""The ahead-of-time TPU compile check runs and its numbers can be read back."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from training import ROOT

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is installed by the tpu extra (x86_64 Linux only)")


def run_aot(*args):
  out = subprocess.run([sys.executable, "-m", "iiet_jax.aot", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  return out


@needs_libtpu
def test_aot_tiny_on_v5e_2x2():
  out = run_aot("--config=configs/lm.py:model=iiet,size=tiny",
                "--topology=v5e:2x2", "--config.batch_size=8",
                "--config.mesh.fsdp=2", "--config.mesh.data=-1")
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["device_kind"] == "TPU v5 lite" and result["devices"] == 4
  assert result["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
  total = (result["argument_gib"] + result["output_gib"] - result["alias_gib"]
           + result["temp_gib"])
  assert result["total_gib"] == pytest.approx(total)
  assert result["argument_gib"] > 0 and result["temp_gib"] > 0
  assert result["alias_gib"] > 0  # the state is donated
  assert result["hbm_gib"] == 15.75 and result["fits"] is True
  assert "fits" in out.stdout


@needs_libtpu
def test_aot_rejects_bad_topology():
  out = run_aot("--config=configs/lm.py:model=iiet,size=tiny",
                "--topology=v5e-16")
  assert out.returncode != 0
  assert "--topology=v5e-16 was not accepted" in out.stderr


@needs_libtpu
def test_aot_reports_what_does_not_fit():
  out = run_aot("--config=configs/lm.py:model=transformer,size=tiny",
                "--topology=v5e:2x2", "--config.batch_size=2048",
                "--config.seq_len=2048")
  assert out.returncode == 1
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["fits"] is False
  assert "exceeds available HBM (15.75G)" in result["error"]
  assert "DOES NOT FIT" in out.stdout


@needs_libtpu
@pytest.mark.slow
def test_aot_fit_lists_fitting_overrides_fastest_first():
  """Batch 64 x 2048 with a 32k vocabulary on v5e:2x2: without remat one
  micro-batch does not fit (measured 11.7 GiB of temporaries at 4), with
  full remat it does, so the search must go further for one policy only."""
  out = run_aot("--config=configs/lm.py:model=iiet,size=tiny",
                "--topology=v5e:2x2", "--config.batch_size=64",
                "--config.seq_len=2048", "--config.model.max_seq_len=2048",
                "--config.mesh.fsdp=4", "--config.mesh.data=1", "--fit",
                "--fit_policies=none,full")
  assert out.returncode == 0, out.stderr[-3000:]
  found = json.loads(out.stdout.strip().splitlines()[-1])
  by_policy = {r["remat"]: r for r in found}
  assert set(by_policy) == {"full", "none"} and all(r["fits"] for r in found)
  assert by_policy["full"]["micro_batches"] == 1
  assert by_policy["none"]["micro_batches"] > 1
  assert "remat=none micro_batches=1: out of memory, does not fit" in out.stdout
  assert [r["step_tflop"] for r in found] == sorted(
      r["step_tflop"] for r in found)
  for r in found:
    assert (f"--config.micro_batches={r['micro_batches']} "
            f"--config.model.remat_policy={r['remat']}") in out.stdout


@needs_libtpu
@pytest.mark.slow
def test_published_1_3b_iiet_fits_v5e_16_by_default():
  """The module docstring's command, with no overrides."""
  out = run_aot("--config=configs/lm.py:model=iiet,size=1.3b",
                "--topology=v5e:4x4")
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["fits"] is True
  assert result["mesh"] == {"data": 1, "fsdp": 16, "tensor": 1}
