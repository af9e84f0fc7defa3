"""run(config, workdir): SimCLRv2's third stage, distillation / self-training on unlabelled images.

    python -m simclr_jax.main --config=configs/distill.py \
        --config.distill.teacher_checkpoint=FINETUNE_WORKDIR [--config.init_checkpoint=PRE] \
        --workdir=NEW

The teacher (checkpoints/teacher.py) is any workdir with a supervised head, frozen: a
fine-tuning (or linear-eval, or distillation) run, or a pretraining / converted official run
whose checkpoint holds head_supervised (its online probe, or an official fine-tuned release).
Its architecture and image size come from its config.json. The student is the model
config.model describes (the same network as the teacher: self-distillation), trained whole,
initialised from the pretraining run config.init_checkpoint names (the paper's
self-distillation; its architecture then wins over config.model) or at random (None).

Each step crops and flips a batch of config.data.train_split (labels unused unless
distill.alpha > 0; an unlabelled split such as stl10's works), runs the teacher on the SAME
view in inference mode (BN moving averages) under stop_gradient, and minimises
losses.distillation_loss(student, teacher) at distill.temperature, plus distill.alpha times the
cross-entropy on the examples whose label is >= 0. The teacher's variables are an argument of
the jitted step, never part of the optimiser state or the checkpoints: they cannot change.

Monitors, as pretraining's: every train.eval_every_epochs and at the end, the student's top-1 /
top-5 on data.eval_split and kNN of its head input (representations.monitor); TensorBoard
scalars, eval_history.json, results.json (also the teacher's top-1 on the same split).
"""

import functools
import json
import os
import time
from typing import Any, Callable

from clu import metric_writers
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections

from simclr_jax import cluster
from simclr_jax import data_check
from simclr_jax import linear_eval
from simclr_jax import loop
from simclr_jax import losses
from simclr_jax import optim
from simclr_jax import progress
from simclr_jax import sharding
from simclr_jax import steps
from simclr_jax import train
from simclr_jax import validation
from simclr_jax.checkpoints import checkpointing
from simclr_jax.checkpoints import encoder as encoders
from simclr_jax.checkpoints import pretrained
from simclr_jax.checkpoints import teacher as teachers
from simclr_jax.cpu import ops
from simclr_jax.data import supervised
from simclr_jax.evaluators import feature_store
from simclr_jax.evaluators import representations
from simclr_jax.models import classifier

MODE = 'distill'
# The pieces a job is assembled from, under the names tests and notebooks use.
Teacher = teachers.Teacher
locate_teacher = teachers.locate_teacher
load_teacher = teachers.load_teacher
RESULTS_FILE = 'results.json'


# ---- the step: pure, so the plan can compile it on abstract inputs ----


def make_distill_step(config: ml_collections.ConfigDict, *, student_apply: Callable,
                      teacher_apply: Callable, teacher_output: str, labels: Any,
                      lr_fn: Callable) -> Callable:
  """distill_step(state, batch, teacher_variables) -> (state, metrics).

  state: steps.TrainState of the student (a classifier.Classifier: outputs 'logits');
  batch: {'image': uint8 [B, S, S, 3], 'label': int32 [B]} sharded over 'data' (labels < 0 and,
  with distill.alpha == 0, all labels are ignored); teacher_variables: {'params',
  'batch_stats'} of the teacher (replicated), read only; teacher_apply(variables, images,
  train=False)[teacher_output]: its logits [B, C]. labels: classifier.trainable_labels of the
  student's params (for linear_eval.l2_loss). Metrics are float32 scalars (global means).
  """
  d = config.distill

  def distill_step(state, batch, teacher_variables):
    images = steps.to_float_images(batch['image'])
    teacher = jax.lax.stop_gradient(
        teacher_apply(teacher_variables, images, train=False)[teacher_output])

    def loss_fn(params):
      out, new_vars = student_apply({'params': params, 'batch_stats': state.batch_stats},
                                    images, train=True, mutable=['batch_stats'])
      logits = out['logits']
      dist = losses.distillation_loss(logits, teacher, d.temperature, d.tau_squared)
      l2 = linear_eval.l2_loss(params, labels, config)
      agree = jnp.mean((jnp.argmax(logits, -1) == jnp.argmax(teacher, -1)).astype(jnp.float32))
      metrics = dict(distill_loss=dist, weight_decay=l2, teacher_agreement=agree)
      total = dist + l2
      if d.alpha > 0:
        y = batch['label']
        sup = losses.supervised_loss(logits, jnp.maximum(y, 0), y >= 0)
        metrics['supervised_loss'] = sup
        total = total + d.alpha * sup
      metrics['total_loss'] = total
      return total, (metrics, new_vars.get('batch_stats', state.batch_stats))

    grads, (metrics, new_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=new_stats)
    metrics.update(learning_rate=lr_fn(state.step), grad_norm=steps.global_norm(grads))
    return new_state, metrics

  return distill_step


class _BoundStep:
  """The jitted step with the teacher's variables as a (non-donated) argument: never baked into
  the program as constants, and `lower` lets loop.run read the step's FLOPs (teacher included)."""

  def __init__(self, jitted, teacher_variables):
    self.jitted, self.teacher_variables = jitted, teacher_variables

  def __call__(self, state, batch):
    return self.jitted(state, batch, self.teacher_variables)

  def lower(self, state, batch):
    return self.jitted.lower(state, batch, self.teacher_variables)


# ---- the job ----


def check_config(config: ml_collections.ConfigDict) -> None:
  """The fields only this job reads; raises validation.ConfigError naming the key."""
  if not config.distill.teacher_checkpoint:
    raise validation.ConfigError(
        "config.mode='distill' needs --config.distill.teacher_checkpoint=WORKDIR (a fine-tuning "
        'run, or any workdir whose checkpoint has a supervised head).')
  if config.data.label_fraction != 1:
    raise validation.ConfigError(
        f'config.data.label_fraction={config.data.label_fraction!r} is invalid; allowed: 1.0 '
        'for distill (it reads every image of data.train_split; label fractions belong to the '
        'fine-tuning that made the teacher).')


def student_config(config: ml_collections.ConfigDict, teacher: Teacher
                   ) -> tuple[ml_collections.ConfigDict, Any]:
  """(config with the student's architecture and the teacher's image size, the pretraining
  checkpoint the student starts from or None)."""
  size = int(teacher.config.data.image_size)
  pre = None
  if config.init_checkpoint:
    pre = pretrained.pretraining_run(config)
    config = pretrained.merged_config(config, pre.config)
    if config.data.image_size != size:
      raise validation.ConfigError(
          f'config.init_checkpoint={config.init_checkpoint!r} was pretrained at '
          f'{config.data.image_size} px but the teacher sees {size} px: the student must see '
          "the teacher's view.")
  out = ml_collections.ConfigDict(config.to_dict())
  out.data.image_size = size
  out.lock()
  return out, pre


def run(config: ml_collections.ConfigDict, workdir: str,
        allow_config_change: bool = False) -> dict[str, Any]:
  """Distils distill.teacher_checkpoint into the student; returns the results dict (also in
  workdir/results.json)."""
  t0 = time.time()
  check_config(config)
  teacher = locate_teacher(config)
  config, pre = student_config(config, teacher)
  for other in [teacher.workdir] + ([pre.workdir] if pre else []):
    if os.path.abspath(workdir) == os.path.abspath(other):
      raise validation.ConfigError(f'--workdir must differ from {other} (the teacher\'s or the '
                                   'student initialisation\'s checkpoints would be mixed in).')
  info, mesh = linear_eval.prepare_job(config, workdir, allow_config_change)
  teacher = load_teacher(teacher, config, mesh)
  if teacher.num_classes != info.num_classes:
    raise validation.ConfigError(
        f'config.distill.teacher_checkpoint={teacher.workdir!r} predicts {teacher.num_classes} '
        f'classes but {info.name} has {info.num_classes}.')
  model = classifier.build_classifier(config, info.num_classes, ops=ops.model_ops(config))
  checkpointing.write_config(workdir, config)
  data_check.announce(config, workdir)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() != 0, asynchronous=False)
  m, d = config.model, config.distill
  progress.say(
      f'distill: teacher {teacher.workdir} (step {teacher.step}, '
      f'{teacher.config.get("mode", "pretrain")}) -> student ResNet-{m.resnet_depth} '
      f'x{m.width_multiplier} ' + (f'from {pre.workdir} (step {pre.step})' if pre else
                                    'from random initialisation')
      + f'; temperature {d.temperature}, alpha {d.alpha}, tau_squared {d.tau_squared}; '
      f'{info.name} {config.data.train_split} ({info.num_train} images) -> '
      f'{config.data.eval_split}.')

  if pre:
    encoder = encoders.load_encoder(pre.workdir, pre.step, mesh=mesh)
    variables = classifier.init_variables(model, encoder.variables, config, mesh)
  else:
    variables = init_student(model, config, mesh)
  labels = classifier.trainable_labels(variables['params'], config)
  # Placed as the step returns it (replicated), or the second step would compile again.
  state = jax.device_put(steps.TrainState.create(
      apply_fn=model.apply, params=variables['params'], batch_stats=variables['batch_stats'],
      tx=linear_eval.create_optimizer(config, info.num_train, variables['params'])),
                         sharding.replicated(mesh))

  outputs_fn = feature_store.make_outputs_fn(_monitor_apply(model.apply), mesh)
  bank_indices, _ = representations.knn_bank(config, info, workdir)
  history = representations.EvalHistory(workdir)
  teacher_scores = evaluate_teacher(config, info, mesh, teacher)
  progress.say(f'Teacher on {config.data.eval_split}: top-1 {teacher_scores["top1"]:.4f} '
               f'top-5 {teacher_scores["top5"]:.4f}.')

  def eval_fn(st, step):
    met, _ = representations.monitor(config, info, mesh, outputs_fn,
                                     {'params': st.params, 'batch_stats': st.batch_stats},
                                     bank_indices)
    out = {'top1': met['online_probe_top1'], 'top5': met['online_probe_top5'],
           'knn_top1': met['knn_top1'], 'knn_top5': met['knn_top5'],
           'num_eval': met['examples_evaluated']}
    writer.write_scalars(step, {f'eval/{k}': v for k, v in out.items() if k != 'num_eval'})
    writer.flush()
    progress.say(f'[eval @ step {step}] student top-1 {out["top1"]:.4f} top-5 '
                 f'{out["top5"]:.4f}, kNN (k={config.eval.knn_k}) top-1 {out["knn_top1"]:.4f} '
                 f'on {out["num_eval"]} examples')
    history.add(dict(out, step=step))
    return out

  lr_fn = optim.create_learning_rate_fn(config, info.num_train)
  step_fn = _BoundStep(jax.jit(make_distill_step(
      config, student_apply=model.apply, teacher_apply=teacher.model.apply,
      teacher_output=teacher.output, labels=labels, lr_fn=lr_fn), donate_argnums=(0,)),
                       teacher.variables)
  mngr, state, start = loop.restore(config, workdir, state)

  def batches(first):
    return supervised.train_dataset(
        config, process_index=jax.process_index(), process_count=jax.process_count(),
        start_step=first).as_numpy_iterator()

  run_ = loop.run(
      config, workdir, mngr=mngr, state=state, start=start,
      total=optim.total_steps(config, info.num_train), step_fn=step_fn, batches=batches,
      mesh=mesh, writer=writer, loss_key='distill_loss', unit='img/s', eval_fn=eval_fn,
      eval_every=train.eval_every_steps(config, info.num_train),
      describe=lambda x: (f'loss {x["distill_loss"]:.4f} agree {x["teacher_agreement"]:.3f} '
                          f'lr {x["learning_rate"]:.4f}'))
  step = int(jax.device_get(run_.state.step))
  with loop.exit_on_sigterm(
      f'SIGTERM during the final evaluation: distillation is finished and its checkpoint of '
      f'step {step} is saved in {workdir}/checkpoints; exiting at once, without results.'):
    scores = eval_fn(run_.state, step)
  results = {
      'config_name': config.name, 'mode': MODE, 'dataset': info.name,
      'teacher_checkpoint': teacher.workdir, 'teacher_step': teacher.step,
      'teacher_top1': teacher_scores['top1'], 'teacher_top5': teacher_scores['top5'],
      'init_checkpoint': pre.workdir if pre else None, 'init_checkpoint_step':
      pre.step if pre else None, 'train_split': config.data.train_split,
      'num_train': info.num_train, 'eval_split': config.data.eval_split,
      'temperature': d.temperature, 'alpha': d.alpha, 'tau_squared': d.tau_squared,
      **scores, 'steps': step, 'skipped_records': run_.skipped_records,
      'final_train_metrics': run_.last_metrics, 'eval_history': history.entries,
      'train_seconds': run_.train_seconds, 'wall_clock_seconds': time.time() - t0}
  path = epath.Path(workdir) / RESULTS_FILE
  cluster.process_0_does(lambda: path.write_text(json.dumps(results, indent=2)),
                         f'writing {path}')
  progress.say(format_table(results))
  return results


def init_student(model: classifier.Classifier, config, mesh) -> dict[str, Any]:
  """Random student variables, created replicated on the mesh. The 'rbg' key as
  steps.make_init_fn (XLA:CPU compiles threefry initialisers far slower)."""
  size = config.data.image_size
  init = functools.partial(model.init, train=False)
  x = jnp.zeros((1, size, size, 3), jnp.float32)
  rng = jax.random.key(config.seed, impl='rbg')
  abstract = jax.eval_shape(init, rng, x)
  out = jax.jit(init, out_shardings=jax.tree.map(lambda _: sharding.replicated(mesh),
                                                 abstract))(rng, x)
  return {'params': out['params'], 'batch_stats': out.get('batch_stats', {})}


def _monitor_apply(apply_fn):
  """The student as representations.monitor reads a model: its head input as 'features' (kNN),
  its logits as 'sup_logits' (top-1)."""
  def apply(variables, images, train=False):
    out = apply_fn(variables, images, train=train)
    return {'features': out['head_input'], 'sup_logits': out['logits']}
  return apply


def evaluate_teacher(config, info, mesh, teacher: Teacher) -> dict[str, float]:
  """The teacher's top-1 / top-5 on the eval split (eval preprocessing, as the student's)."""
  fn = feature_store.make_embed_fn(teacher.model.apply, mesh, teacher.output)
  ev = feature_store.extract_sharded(config, config.data.eval_split, info.num_eval, mesh,
                                     functools.partial(fn, teacher.variables))
  feature_store.check_labels(ev, info.num_classes, 'config.data.eval_split')
  top1, top5 = feature_store.topk_accuracies(ev.outputs, ev, (1, 5))
  return {'top1': top1, 'top5': top5}


def format_table(r: dict[str, Any]) -> str:
  rows = [('model', 'top-1', 'top-5', 'kNN top-1'),
          ('teacher (frozen)', f'{r["teacher_top1"]:.4f}', f'{r["teacher_top5"]:.4f}', '-'),
          ('distilled student', f'{r["top1"]:.4f}', f'{r["top5"]:.4f}', f'{r["knn_top1"]:.4f}')]
  return '\n'.join([
      f'distill of {r["teacher_checkpoint"]} (step {r["teacher_step"]}) on {r["dataset"]} '
      f'({r["num_train"]} {r["train_split"]} images, {r["steps"]} steps; {r["eval_split"]} '
      f'split, {r["num_eval"]} examples, {r["wall_clock_seconds"]:.0f} s total):',
      *progress.table(rows)])
