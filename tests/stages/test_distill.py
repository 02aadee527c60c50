"""IIAD distillation: the step, the stage, and its refusals."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import random_tokens, small_config
from iiet_jax import checkpoint as ckpt_lib
from iiet_jax import stages
from iiet_jax.iiad import selection
from iiet_jax.models import build_model
from iiet_jax.stages import distill
from iiet_jax.train import loss as loss_lib
from iiet_jax.train.optimizer import make_optimizer
from iiet_jax.train.state import TrainState
from iiet_jax.train.step import make_train_step
from training import (read_metrics, run_config, stop_after,
                      tiny_training_config)


def test_one_distill_step_lowers_the_kl_and_leaves_the_teacher_alone():
  teacher = build_model(small_config(iterations=2))
  student = build_model(small_config(iterations=(1, 0, 1)))
  tokens = random_tokens(teacher.config, 4, 16)
  teacher_params = nn.unbox(teacher.init(jax.random.key(0), tokens)["params"])
  # A student from other weights, so there is something to distil.
  params = nn.unbox(student.init(jax.random.key(1), tokens)["params"])
  before = jax.tree.map(np.asarray, teacher_params)
  opt = tiny_training_config().optimizer
  opt.peak_lr, opt.warmup_steps = 1e-3, 1
  tx, schedule = make_optimizer(opt, total_steps=10)
  step = jax.jit(make_train_step(
      student, tx, schedule,
      objective=distill.distill_objective(student, teacher, 1.0, 1.0)))
  batch = {"tokens": tokens}

  def kl(p):
    w = loss_lib.target_weights(tokens)
    return float(loss_lib.kl_sum(student.apply({"params": p}, tokens),
                                 teacher.apply({"params": teacher_params},
                                               tokens), w) / w.sum())
  state = TrainState.create(params, tx)
  state, _ = step(state, batch, teacher_params)  # lr 0 at step 0
  start = kl(state.params)
  state, metrics = step(state, batch, teacher_params)
  assert start > 1e-3
  assert kl(state.params) < start
  np.testing.assert_allclose(float(metrics["kl"]), start, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(teacher_params)):
    np.testing.assert_array_equal(np.asarray(b), a)


def test_kl_is_zero_for_identical_logits_and_matches_a_direct_sum():
  rng = np.random.default_rng(0)
  s = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
  w = jnp.ones((2, 4))
  assert float(loss_lib.kl_sum(s, s, w)) == pytest.approx(0.0, abs=1e-6)
  p = jax.nn.softmax(t[:, :-1])
  direct = np.sum(p * (np.log(p) - jax.nn.log_softmax(s[:, :-1])))
  assert float(loss_lib.kl_sum(s, t, w)) == pytest.approx(float(direct),
                                                           rel=1e-5)


def _teacher(tmp_path):
  cfg = run_config(tmp_path / "data", "iiet", total_steps=4)
  stages.train(cfg, tmp_path / "teacher")
  return cfg


def _student(tmp_path, total_steps=4, **distill_kw):
  cfg = run_config(tmp_path / "data", "iiet", total_steps=total_steps)
  cfg.stage = "distill"
  cfg.distill.teacher = str(tmp_path / "teacher")
  cfg.distill.update(distill_kw)
  return cfg


def test_distill_stage_runs_resumes_and_keeps_its_iterations(tmp_path):
  _teacher(tmp_path)
  cfg = _student(tmp_path, total_steps=6, budget=0.5)
  with stop_after(3):
    first = stages.train(cfg, tmp_path / "student")
  assert first["preempted"]
  saved = ckpt_lib.saved_run(str(tmp_path / "student"))
  kept = saved.model["iterations"]
  assert saved.model["phase"] == "distill"
  assert 2 <= sum(kept) < 4  # half of the teacher's 2 x 2 iterations
  # Resumed with another rule: the saved r_t stand, nothing is re-measured.
  cfg.distill.budget, cfg.distill.tau = 0.0, 0.0
  summary = stages.train(cfg, tmp_path / "student")
  assert summary["steps"] == 6
  assert summary["student_iterations"] == kept
  assert summary["teacher_iterations"] == [2, 2]
  assert summary["student_validation_loss"] > 0
  assert summary["teacher_validation_loss"] > 0
  losses, events = read_metrics(tmp_path / "student")
  assert sorted(losses) == list(range(1, 7))
  assert any(e["event"].startswith("final: teacher_validation_loss")
             for e in events)


def test_non_iiet_teacher_is_refused(tmp_path):
  cfg = run_config(tmp_path / "data", "transformer", total_steps=2)
  stages.train(cfg, tmp_path / "teacher")
  with pytest.raises(distill.DistillError, match="'transformer' model.*IIET"):
    stages.train(_student(tmp_path), tmp_path / "student")


def test_bad_tau_is_refused_before_training(tmp_path):
  _teacher(tmp_path)
  with pytest.raises(selection.SelectionError, match="tau=1.5 is outside"):
    stages.train(_student(tmp_path, tau=1.5), tmp_path / "student")
  assert not (tmp_path / "student" / "checkpoints").exists() or not list(
      (tmp_path / "student" / "checkpoints").iterdir())
