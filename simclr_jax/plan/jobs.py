"""The step each job compiles, built on abstract inputs (shapes, dtypes, shardings; no data, no
checkpoint) exactly as the job builds it: pretraining (train.py), linear evaluation and
fine-tuning (linear_eval.py), distillation (distill.py). Each returns (jitted step, abstract
state, abstract batch, model); step.compile_step lowers and compiles it."""

import functools
from typing import Sequence


def abstract_step(config, devices: Sequence, num_train: int, num_classes: int):
  """(jitted step, abstract state, abstract batch, model) on a mesh of `devices`, as
  train.py builds them: parameters and LARS state replicated and donated, batch sharded."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from simclr_jax import models  # pylint: disable=g-import-not-at-top
  from simclr_jax import optim  # pylint: disable=g-import-not-at-top
  from simclr_jax import sharding  # pylint: disable=g-import-not-at-top
  from simclr_jax import steps  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(devices)
  model = models.build_model(config, num_classes)  # XLA's convolutions: what a TPU/GPU runs.
  size = config.data.image_size
  tx = optim.create_optimizer(config, num_train)
  init = functools.partial(steps.create_train_state, model=model, tx=tx,
                           image_shape=(size, size, 3))
  rep = sharding.replicated(mesh)
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                       jax.eval_shape(init, jax.random.key(config.seed, impl='rbg')))
  b, by_batch = config.train.batch_size, sharding.batch_sharded(mesh)
  batch = {'views': jax.ShapeDtypeStruct((b, 2, size, size, 3), jnp.uint8, sharding=by_batch),
           'label': jax.ShapeDtypeStruct((b,), jnp.int32, sharding=by_batch)}
  step = jax.jit(functools.partial(steps.train_step, config=config, mesh=mesh,
                                   lr_fn=optim.create_learning_rate_fn(config, num_train)),
                 donate_argnums=(0,))
  return step, state, batch, model


def abstract_supervised_step(config, devices: Sequence, num_train: int, num_classes: int):
  """linear_eval / finetune as linear_eval.run builds them on images (the paper's protocol):
  the Classifier, the optimiser with frozen leaves set to zero, the crop + flip uint8 batch."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from simclr_jax import linear_eval  # pylint: disable=g-import-not-at-top
  from simclr_jax import optim  # pylint: disable=g-import-not-at-top
  from simclr_jax import sharding  # pylint: disable=g-import-not-at-top
  from simclr_jax import steps  # pylint: disable=g-import-not-at-top
  from simclr_jax.models import classifier  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(devices)
  model = classifier.build_classifier(config, num_classes)
  size = config.data.image_size
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                             jnp.zeros((1, size, size, 3), jnp.float32))
  labels = classifier.trainable_labels(variables['params'], config)
  tx = linear_eval.create_optimizer(config, num_train, variables['params'])
  rep = sharding.replicated(mesh)
  state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
      jax.eval_shape(lambda v: steps.TrainState.create(
          apply_fn=model.apply, params=v['params'], batch_stats=v['batch_stats'], tx=tx),
                     variables))
  b, by_batch = config.train.batch_size, sharding.batch_sharded(mesh)
  batch = {'image': jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8, sharding=by_batch),
           'label': jax.ShapeDtypeStruct((b,), jnp.int32, sharding=by_batch)}
  step = jax.jit(functools.partial(linear_eval.train_step, config=config, labels=labels,
                                   lr_fn=optim.create_learning_rate_fn(config, num_train),
                                   forward=linear_eval.image_forward(model.apply)),
                 donate_argnums=(0,))
  return step, state, batch, model


class _WithTeacher:
  """The jitted distillation step with the teacher's (abstract, replicated, not donated)
  variables bound, so it lowers like the other jobs' steps: lower(state, batch)."""

  def __init__(self, jitted, teacher_variables):
    self.jitted, self.teacher_variables = jitted, teacher_variables

  def lower(self, state, batch):
    return self.jitted.lower(state, batch, self.teacher_variables)


def abstract_distill_step(config, devices: Sequence, num_train: int, num_classes: int,
                          teacher_config=None):
  """distill as distill.run builds it: the student's state (donated), the frozen teacher's
  variables replicated beside it, teacher and student on the same crop + flip uint8 batch.
  teacher_config: the teacher run's config (its architecture); None: the student's own
  (self-distillation)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from simclr_jax import distill  # pylint: disable=g-import-not-at-top
  from simclr_jax import optim  # pylint: disable=g-import-not-at-top
  from simclr_jax import sharding  # pylint: disable=g-import-not-at-top
  from simclr_jax.models import classifier  # pylint: disable=g-import-not-at-top
  _, state, batch, model = abstract_supervised_step(config, devices, num_train, num_classes)
  t = ml_collections.ConfigDict((teacher_config or config).to_dict())
  t.mode, t.data.image_size = 'finetune', config.data.image_size  # Inference: BN statistics.
  teacher = classifier.build_classifier(t, num_classes)
  size = config.data.image_size
  rep = sharding.replicated(sharding.make_mesh(devices))
  teacher_variables = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
      jax.eval_shape(functools.partial(teacher.init, train=False), jax.random.key(0),
                     jnp.zeros((1, size, size, 3), jnp.float32)))
  fn = distill.make_distill_step(
      config, student_apply=model.apply, teacher_apply=teacher.apply, teacher_output='logits',
      labels=classifier.trainable_labels(state.params, config),
      lr_fn=optim.create_learning_rate_fn(config, num_train))
  step = _WithTeacher(jax.jit(fn, donate_argnums=(0,)), teacher_variables)
  return step, state, batch, (model, teacher)


def abstract_job_step(config, devices: Sequence, num_train: int, num_classes: int,
                      teacher_config=None):
  """The step of config.mode: pretraining's, the supervised jobs' or distillation's."""
  if config.mode == 'distill':
    return abstract_distill_step(config, devices, num_train, num_classes, teacher_config)
  fn = abstract_step if config.mode == 'pretrain' else abstract_supervised_step
  return fn(config, devices, num_train, num_classes)
