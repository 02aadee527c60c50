"""train/loop.py running whole plans in this process: the two-stage
switch, resume, SIGTERM, a damaged checkpoint, restore onto another mesh,
warm starts, refusals, which checkpoints are kept."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from iiet_jax import checkpoint as ckpt_lib
from iiet_jax import stages
from iiet_jax.stages import pretrain
from iiet_jax.models import registry
from iiet_jax.train import merge as merge_lib
from iiet_jax.train.build import build_training
from training import (NoData, batches, read_metrics, run_config, stop_after,
                      tiny_training_config)


def _one_device(cfg):
  return build_training(cfg, devices=jax.devices()[:1])


def _leaves(tree) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in merge_lib.leaf_paths(tree).items()}


def test_switch_carries_parameters_and_moments_bit_for_bit():
  cfg = tiny_training_config("transformer")
  old = _one_device(cfg)
  state = old.init_state(0)
  for batch in batches(cfg, 2):
    state, _ = old.train_step(state, batch)
  cfg_new = cfg.copy_and_resolve_references()
  cfg_new.model.arch = "iiet"
  new = _one_device(cfg_new)
  fresh = new.init_state(1)
  switched, report = pretrain.switch(state, fresh)

  before, after, init = (_leaves(state.params), _leaves(switched.params),
                         _leaves(fresh.params))
  assert set(before) < set(after) and report["carried"] == len(before)
  for path, value in before.items():
    np.testing.assert_array_equal(after[path], value)  # bit for bit
  new_paths = set(after) - set(before)
  assert new_paths == set(report["new"])
  assert any("history/weight_c" in p for p in new_paths)
  assert any("predictor_norm" in p for p in new_paths)
  for path in new_paths:  # W, Wc, LNp, LNc start at their init.
    np.testing.assert_array_equal(after[path], init[path])
  moments, new_moments = _leaves(state.opt_state), _leaves(switched.opt_state)
  for path, value in moments.items():
    np.testing.assert_array_equal(new_moments[path], value)
  assert int(switched.step) == 2 == int(state.step)
  # The optimizer's own count, which drives the schedule, continues too.
  counts = [v for p, v in new_moments.items() if p.endswith("count")]
  assert counts and all(int(c) == 2 for c in counts)
  # And the new model trains from there.
  switched, metrics = new.train_step(switched, batches(cfg, 1, seed=5)[0])
  assert np.isfinite(float(metrics["loss"]))


def test_merge_refuses_what_is_not_allowed():
  cfg = tiny_training_config("transformer")
  iiet = tiny_training_config("iiet")
  small = _one_device(cfg).init_state(0).params
  big = _one_device(iiet).init_state(0).params
  with pytest.raises(merge_lib.MergeError, match="history/weight is new"):
    merge_lib.merge(small, big)
  with pytest.raises(merge_lib.MergeError, match="would be dropped"):
    merge_lib.merge(big, small)
  wide = _one_device(tiny_training_config("transformer", d_ff=96))
  with pytest.raises(merge_lib.MergeError, match=r"mlp/up: loaded float32"):
    merge_lib.merge(wide.init_state(0).params, small)


def test_two_stage_run_switches_at_the_configured_step(tmp_path):
  cfg = run_config(tmp_path / "data", "iiet", total_steps=12, switch_at=0.5)
  summary = stages.train(cfg, tmp_path / "run")
  assert summary["steps"] == 12 and not summary["preempted"]
  losses, events = read_metrics(tmp_path / "run")
  switch = [e for e in events if e["event"].startswith("switched to iiet")]
  assert [e["step"] for e in switch] == [6]
  assert sorted(losses) == list(range(1, 13))
  # Loss keeps falling after the switch on this corpus.
  assert losses[12][-1] < losses[7][-1] < losses[1][-1]
  checkpoints = ckpt_lib.Checkpoints(tmp_path / "run" / "checkpoints")
  assert checkpoints.model_description(6)["phase"] == "transformer"
  assert checkpoints.model_description(8)["phase"] == "iiet"
  assert checkpoints.model_description(12)["arch"] == "iiet"
  checkpoints.close()
  # Run again in the finished workdir: nothing trains, the summary stands.
  assert stages.train(cfg, tmp_path / "run") == summary
  assert sorted(read_metrics(tmp_path / "run")[0]) == list(range(1, 13))


def _run(cfg, workdir):
  summary = stages.train(cfg, workdir)
  return summary, read_metrics(workdir)


def test_resume_after_the_switch_continues_exactly(tmp_path):
  cfg = run_config(tmp_path / "data", "iiet", total_steps=10, switch_at=0.4)
  _, (full, _) = _run(cfg, tmp_path / "full")
  # The same run, stopped after step 6 (IIET since step 4), then resumed.
  short = cfg.copy_and_resolve_references()
  part = tmp_path / "part"
  short.total_steps = 10
  loop_stop = stop_after(6)
  with loop_stop:
    stages.train(short, part)
  summary, (resumed, events) = _run(cfg, part)
  assert summary["steps"] == 10
  assert any(e["event"].startswith("resumed from step 6 (iiet)")
             for e in events)
  for step in range(1, 11):
    assert resumed[step][-1] == full[step][-1], step  # bit-identical


def test_sigterm_checkpoints_and_returns(tmp_path, monkeypatch):
  from jax.experimental import multihost_utils

  def refuse(*args, **kwargs):
    raise AssertionError("a collective in a one-process run")
  for name in ("process_allgather", "sync_global_devices",
               "reached_preemption_sync_point"):
    monkeypatch.setattr(multihost_utils, name, refuse)
  cfg = run_config(tmp_path / "data", "transformer", total_steps=8)
  with stop_after(3):
    summary = stages.train(cfg, tmp_path / "run")
  assert summary["preempted"] and summary["steps"] == 3
  checkpoints = ckpt_lib.Checkpoints(tmp_path / "run" / "checkpoints")
  assert checkpoints.steps() == [2, 3]
  checkpoints.close()


def test_a_stop_at_the_last_step_is_a_finished_run(tmp_path):
  # Else every rerun would find the summary of a stopped run and report a
  # preemption again (a requeue loop on a cluster).
  cfg = run_config(tmp_path / "data", "transformer", total_steps=8)
  with stop_after(8):
    summary = stages.train(cfg, tmp_path / "run")
  assert summary["steps"] == 8
  assert not summary["preempted"] and summary["stopped_by"] is None
  again = stages.train(cfg, tmp_path / "run")
  assert not again["preempted"] and again["validation_loss"] == \
      summary["validation_loss"]


def test_a_resume_under_another_nonfinite_policy_is_refused(tmp_path):
  # nonfinite=skip wraps the optimizer state: restoring across the two
  # layouts would take every checkpoint for damaged.
  cfg = run_config(tmp_path / "data", "transformer", total_steps=4)
  with stop_after(2):
    stages.train(cfg, tmp_path / "run")
  skip = cfg.copy_and_resolve_references()
  skip.nonfinite = "skip"
  with pytest.raises(ckpt_lib.CheckpointError, match="nonfinite=stop"):
    stages.train(skip, tmp_path / "run")
  assert ckpt_lib.saved_steps(tmp_path / "run" / "checkpoints") == [2]


def test_corrupted_latest_checkpoint_falls_back(tmp_path):
  cfg = run_config(tmp_path / "data", "transformer", total_steps=4)
  stages.train(cfg, tmp_path / "run")
  latest = tmp_path / "run" / "checkpoints" / "4" / "state"
  for path in latest.rglob("*"):
    if path.is_file():
      path.write_bytes(b"garbage")
  cfg.total_steps = 6
  summary, (_, events) = _run(cfg, tmp_path / "run")
  assert summary["steps"] == 6
  said = [e["event"] for e in events]
  assert any("checkpoint step 4 unreadable; fell back to step 2" in e
             for e in said)
  assert any(e.startswith("resumed from step 2") for e in said)


def test_workdir_of_another_architecture_is_refused(tmp_path):
  cfg = run_config(tmp_path / "data", "transformer", total_steps=2)
  stages.train(cfg, tmp_path / "run")
  other = run_config(tmp_path / "data", "iiet", total_steps=2)
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"'transformer'.*this config trains \['iiet'\]"):
    stages.train(other, tmp_path / "run")
  wider = run_config(tmp_path / "data", "transformer", total_steps=2,
                     d_model=64)
  with pytest.raises(ckpt_lib.CheckpointError,
                     match="d_model: saved 32, config 64"):
    stages.train(wider, tmp_path / "run")


def test_restore_onto_a_different_mesh(tmp_path):
  cfg = tiny_training_config("iiet", mesh=(1, 8, 1), preset="fsdp")
  training = build_training(cfg)
  state = training.init_state(0)
  state, _ = training.train_step(state, batches(cfg, 1)[0])
  expected = _leaves(state)

  saver = ckpt_lib.Checkpoints(tmp_path / "ckpt")
  saver.save(1, state, NoData(), {}, ckpt_lib.describe(
      training.model.config, "iiet"))
  saver.close()

  small = tiny_training_config("iiet", mesh=(2, 2, 1), preset="fsdp")
  other = build_training(small, devices=jax.devices()[:4])
  restored = ckpt_lib.Checkpoints(tmp_path / "ckpt").restore(
      other.sharded_state(), NoData())
  assert restored.step == 1
  got = _leaves(restored.state)
  assert got.keys() == expected.keys()
  for path, value in expected.items():
    np.testing.assert_array_equal(got[path], value)
  leaf = restored.state.params["decoder"]["stack"]["layers"]["layer"][
      "block"]["mlp"]["up"]
  assert len(leaf.sharding.device_set) == 4
  # And training goes on from it on the new mesh.
  _, metrics = other.train_step(restored.state, batches(small, 1, seed=3)[0])
  assert np.isfinite(float(metrics["loss"]))


def test_warm_start_from_another_run(tmp_path, capsys):
  cfg = run_config(tmp_path / "data", "transformer", total_steps=2)
  stages.train(cfg, tmp_path / "teacher")
  source = ckpt_lib.Checkpoints(tmp_path / "teacher" / "checkpoints")
  saved = source.restore(build_training(cfg).sharded_state(),
                         NoData())
  source.close()
  warm = run_config(tmp_path / "data", "iiet", total_steps=2)
  warm.init_from = str(tmp_path / "teacher")
  # A Transformer++ source under an IIET config: the two-stage switch at
  # step 0 carries it (stages/pretrain.py), no allow-list needed.
  stages.train(warm, tmp_path / "student")
  assert "switched to iiet at step 0" in capsys.readouterr().out
  warm.init_allow_new = registry.ADDED_PARAMS
  training = build_training(warm)
  from iiet_jax.train import warm_start
  state = warm_start.load_params(training.init_state(0), training, warm)
  got, want = _leaves(state.params), _leaves(saved.state.params)
  for path, value in want.items():
    np.testing.assert_array_equal(got[path], value)
  assert int(state.step) == 0


def test_keeps_the_newest_and_the_best(tmp_path):
  checkpoints = ckpt_lib.Checkpoints(tmp_path, keep=1, keep_best=1)
  state = {"w": jax.numpy.zeros(3)}
  for step, loss in zip(range(1, 6), [3.0, 1.0, 2.0, None, 4.0]):
    metrics = None if loss is None else {ckpt_lib.VALIDATION_METRIC: loss}
    checkpoints.save(step, state, NoData(), {}, {"phase": "x"}, metrics)
  checkpoints.wait()
  assert checkpoints.steps() == [2, 5]  # best validation loss, newest
  checkpoints.close()
  with pytest.raises(ckpt_lib.CheckpointError, match="keep=0"):
    ckpt_lib.Checkpoints(tmp_path / "other", keep=0)
