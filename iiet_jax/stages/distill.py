"""IIAD distillation into E-IIET (SPEC.md section 5, step 3).

The teacher is a trained IIET run (`distill.teacher`: its workdir), restored
parameters-only into the student's shardings and frozen. The student has the
teacher's architecture and weights with per-layer iteration counts r_t chosen
by iteration influence on validation batches (`distill.tau`, or
`distill.budget` as a share of all iterations to keep). Loss per token:

    CE(student) + kl_weight * KL(softmax(teacher / T) || softmax(student / T))

with the teacher's forward inside the same jitted step. The chosen r_t are
part of the student's model description, saved with every checkpoint: a
resumed distillation reads them from there and never re-measures.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp

from iiet_jax import checkpoint as ckpt_lib
from iiet_jax import runs
from iiet_jax.data import tokenizer as tok_lib
from iiet_jax.iiad import influence as inf
from iiet_jax.iiad import selection as selection_lib
from iiet_jax.iiad import teacher as teacher_lib
from iiet_jax.models import registry
from iiet_jax.overrides import with_model
from iiet_jax.parallel import sharding as shd
from iiet_jax.stages.pretrain import PlanError
from iiet_jax.train import loss as loss_lib
from iiet_jax.train import step as step_lib
from iiet_jax.train.build import Training, build_training
from iiet_jax.train.loop import Phase
from iiet_jax.errors import UserError

PHASE = "distill"


class DistillError(UserError, ValueError):
  """A distillation request that cannot be carried out."""

  kind = "Distill"


def distill_objective(student, teacher, kl_weight: float, temperature: float,
                      z_loss: float = 0.0) -> Callable:
  """objective(params, batch, teacher_params) for `make_train_step`."""
  def objective(params, batch, teacher_params):
    s_BTV = loss_lib.forward(student, params, batch)
    t_BTV = jax.lax.stop_gradient(
        loss_lib.forward(teacher, teacher_params, batch))
    sums = loss_lib.next_token_sums(s_BTV, batch["tokens"], batch.get("mask"),
                                    batch.get("segment_ids"))
    weights = loss_lib.target_weights(batch["tokens"], batch.get("mask"),
                                      batch.get("segment_ids"))
    sums["kl"] = loss_lib.kl_sum(s_BTV, t_BTV, weights, temperature)
    total = sums["nll"] + z_loss * sums["z"] + kl_weight * sums["kl"]
    return total, sums
  return objective


@dataclasses.dataclass
class DistillTraining(Training):
  """A Training whose step also reads the frozen teacher's parameters."""
  teacher_params: object = None
  teacher_eval: object = None
  selection: dict | None = None
  teacher_iterations: tuple = ()

  def report(self, state, batches, feed) -> dict[str, float]:
    """Validation loss of teacher and student on the same batches."""
    out = {}
    for who, step, params in (("teacher", self.teacher_eval,
                               self.teacher_params),
                              ("student", self.eval_step, state.params)):
      out[f"{who}_validation_loss"] = loss_lib.evaluate(step, params, batches,
                                                        feed)["loss"]
    out["student_iterations"] = list(self.model.config.iterations)
    out["teacher_iterations"] = list(self.teacher_iterations)
    return out

  def init_state(self, seed: int):
    """The student starts from the teacher's weights, with fresh moments."""
    state = super().init_state(seed)
    # A copy: the train step donates the student's buffers, and the
    # teacher's must outlive it.
    copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree),
                   out_shardings=self.state_shardings.params)
    params = copy(self.teacher_params)
    return state.replace(params=params, opt_state=self.tx.init(params))


def teacher_run(config) -> ckpt_lib.SavedRun:
  if not config.distill.teacher:
    raise DistillError("distill.teacher is empty: give the workdir of a "
                       "trained IIET run (--config.distill.teacher=DIR).")
  run = ckpt_lib.saved_run(config.distill.teacher)
  arch = run.model.get("arch")
  if arch not in registry.NAMES or not registry.get(arch).implicit_iterations:
    raise DistillError(
        f"The teacher {config.distill.teacher} is a {run.model.get('arch')!r} "
        f"model (phase {run.model.get('phase')!r}); IIAD distils an IIET "
        f"teacher into E-IIET. Use a model=iiet run that finished its IIET "
        f"phase.")
  return run


def choose_iterations(config, model, params, batches) -> dict:
  """Influence on `batches`, then r_t by `distill.tau` or `distill.budget`."""
  measured = inf.measure(model, params, batches)
  d = config.distill
  chosen = teacher_lib.select(measured.state_change, model.config,
                              config.seq_len, d.tau, d.budget)
  return {**chosen, "influence": measured.to_json()}


def build(config, batch_keys, loaders, workdir) -> DistillTraining:
  """The student's Training, with the teacher loaded and r_t decided."""
  d = config.distill
  check_student(config, loaders.tokenizer)   # checked before it is read
  mesh, rules = shd.from_config(config)
  teacher = runs.open_model(config.distill.teacher, on=(mesh, rules),
                            dtype=config.model.dtype,
                            remat_policy=config.model.remat_policy)
  teacher_cfg, teacher_params = teacher.model.config, teacher.params
  chosen = _resumed_iterations(workdir)
  if chosen is None:
    batches = loaders.validation[:d.influence_batches]
    chosen = choose_iterations(config, teacher.model, teacher_params, batches)
    logging.info("IIAD selection: %s", json.dumps(
        {k: v for k, v in chosen.items() if k != "influence"}))
  student_cfg = dataclasses.replace(teacher_cfg,
                                    iterations=tuple(chosen["iterations"]))
  student = build_training(with_model(config, student_cfg),
                           batch_keys=batch_keys)
  objective = distill_objective(student.model, teacher.model, d.kl_weight,
                                d.temperature, config.z_loss)
  train_fn = step_lib.make_train_step(student.model, student.tx,
                                      student.schedule, config.micro_batches,
                                      config.z_loss, objective=objective)
  sharded = step_lib.ShardedStep(
      train_fn, student.mesh, student.rules,
      in_shardings=(student.state_shardings,
                    step_lib.batch_shardings(batch_keys, student.mesh,
                                             student.rules),
                    student.state_shardings.params),
      out_shardings=(student.state_shardings,
                     jax.sharding.NamedSharding(student.mesh,
                                                jax.sharding.PartitionSpec())),
      donate_argnums=(0,))
  fields = {f.name: getattr(student, f.name)
            for f in dataclasses.fields(Training)}
  fields["train_step"] = lambda state, batch: sharded(state, batch,
                                                      teacher_params)
  return DistillTraining(**fields, teacher_params=teacher_params,
                         teacher_eval=step_lib.jit_eval_step(
                             step_lib.make_eval_step(teacher.model),
                             jax.tree.map(lambda p: p.sharding,
                                          teacher.placed),
                             mesh, rules, batch_keys),
                         selection=chosen,
                         teacher_iterations=teacher_cfg.iterations)


def _resumed_iterations(workdir) -> dict | None:
  """r_t of an existing student checkpoint in `workdir`, if any."""
  directory = workdir / "checkpoints"
  if not directory.is_dir():
    return None
  try:
    run = ckpt_lib.saved_run(str(directory))
  except ckpt_lib.CheckpointError:
    return None
  return {"iterations": list(run.model["iterations"]), "resumed": True}


def check_student(config, tokenizer=None) -> None:
  """The student's data must be the teacher's: the same vocabulary, and the
  same tokenizer (`tokenizer`, once loaded; before that, the file
  `data.tokenizer` names). The student is the teacher's model with fewer
  iterations, so any other model field of the config is not used."""
  d = config.distill
  selection_lib.check(d.tau, d.budget or None)   # before the teacher is read
  run = teacher_run(config)
  teacher = d.teacher
  vocab = run.model.get("vocab_size")
  if vocab is not None and config.model.vocab_size != vocab:
    raise DistillError(
        f"model.vocab_size={config.model.vocab_size}, but the teacher "
        f"{teacher} has {vocab}: the student is the teacher's model and "
        f"reads the teacher's token ids. Set --config.model.vocab_size="
        f"{vocab} (and the teacher's tokenizer).")
  held = tok_lib.carried_by(teacher)
  if held is None:
    return
  if tokenizer is None and config.data.get("tokenizer"):
    tokenizer = tok_lib.load_tokenizer(config.data.tokenizer)
  if tokenizer is not None and not tok_lib.same(tokenizer, held):
    raise DistillError(
        f"The student's tokenizer {tokenizer.path} is not the teacher's "
        f"({held.path}): the teacher would score token ids it never "
        f"learned. Use --config.data.tokenizer={held.path}.")


def phases(config) -> list[Phase]:
  if config.total_steps < 1:
    raise PlanError(f"total_steps={config.total_steps} must be >= 1.")
  check_student(config)
  return [Phase(PHASE, 0, config.total_steps, config, build=build,
                report=lambda state, training, batches, feed:
                training.report(state, batches, feed))]
