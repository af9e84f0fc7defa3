"""Two jitted distillation steps on a fixed global batch, run by every process of a job.

    python tests/helpers/mp_distill_step.py --teacher=FT_WORKDIR --init=PRE_WORKDIR --out=FILE
        [--coordinator_address=... --num_processes=... --process_id=...]

`compute(mesh, teacher, init)` does what distill.run does before its loop: locates the teacher
(process 0 lists), restores it and the student's pretraining checkpoint on every process, places
the student state replicated; then feeds each process its rows of one fixed global batch (real
digits) to two donated steps and returns, on host: both steps' losses, the student's params and
BN statistics, and whether the teacher's variables came back bitwise. Process 0 writes them to
FILE (.npz); the test compares them with the same function run by one process on 8 devices.
"""

import sys

import numpy as np

GLOBAL_BATCH = 32


def compute(mesh, teacher_workdir: str, init_workdir: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from configs import test as test_config  # pylint: disable=g-import-not-at-top
  from simclr_jax import distill, linear_eval, optim  # pylint: disable=g-import-not-at-top
  from simclr_jax import sharding, steps  # pylint: disable=g-import-not-at-top
  from simclr_jax.checkpoints import encoder as encoders  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import embedded  # pylint: disable=g-import-not-at-top
  from simclr_jax.models import classifier  # pylint: disable=g-import-not-at-top
  config = test_config.get_config()
  config.mode = 'distill'
  config.distill.teacher_checkpoint = teacher_workdir
  config.init_checkpoint = init_workdir
  config.distill.temperature = 0.5
  config.optim.optimizer = 'momentum'
  config.optim.learning_rate = 0.1
  config.optim.warmup_epochs = 0.0
  config.optim.weight_decay = 0.0
  config.train.batch_size = GLOBAL_BATCH
  teacher = distill.locate_teacher(config)
  config, pre = distill.student_config(config, teacher)
  teacher = distill.load_teacher(teacher, config, mesh)
  before = jax.tree.map(lambda x: np.array(x.addressable_data(0)), teacher.variables)
  model = classifier.build_classifier(config, 10)
  variables = classifier.init_variables(
      model, encoders.restore_variables(pre.workdir, pre.step, sharding.replicated(mesh)),
      config, mesh)
  state = jax.device_put(steps.TrainState.create(
      apply_fn=model.apply, params=variables['params'], batch_stats=variables['batch_stats'],
      tx=linear_eval.create_optimizer(config, 4000, variables['params'])),
                         sharding.replicated(mesh))
  step = jax.jit(distill.make_distill_step(
      config, student_apply=model.apply, teacher_apply=teacher.model.apply,
      teacher_output=teacher.output,
      labels=classifier.trainable_labels(variables['params'], config),
      lr_fn=optim.create_learning_rate_fn(config, 4000)), donate_argnums=(0,))
  images, labels = embedded.load('train')
  size = config.data.image_size
  x = np.asarray(jax.image.resize(images[:GLOBAL_BATCH].astype(np.float32),
                                  (GLOBAL_BATCH, size, size, 3), 'bilinear'))
  x = x.clip(0, 255).round().astype(np.uint8)
  b = GLOBAL_BATCH // jax.process_count()
  rows = slice(jax.process_index() * b, (jax.process_index() + 1) * b)
  batch = sharding.global_batch({'image': x[rows], 'label': labels[:GLOBAL_BATCH][rows]}, mesh)
  out = {}
  for i in range(2):
    state, metrics = step(state, batch, teacher.variables)
    out[f'loss{i}'] = np.asarray(metrics['distill_loss'].addressable_data(0))
  host = lambda tree: {jax.tree_util.keystr(k): np.asarray(v.addressable_data(0))
                       for k, v in jax.tree_util.tree_leaves_with_path(tree)}
  out.update({f'params{k}': v for k, v in host(state.params).items()})
  out.update({f'stats{k}': v for k, v in host(state.batch_stats).items()})
  after = jax.tree.map(lambda x: np.array(x.addressable_data(0)), teacher.variables)
  out['teacher_bitwise'] = np.asarray(jax.tree.all(jax.tree.map(np.array_equal, before, after)))
  return out


def main(argv):
  flags = dict(a[2:].split('=', 1) for a in argv[1:])
  import jax  # pylint: disable=g-import-not-at-top
  from simclr_jax import cluster, sharding  # pylint: disable=g-import-not-at-top
  cluster.initialize(flags.get('coordinator_address'),
                     int(flags['num_processes']) if 'num_processes' in flags else None,
                     int(flags['process_id']) if 'process_id' in flags else None)
  out = compute(sharding.make_mesh(), flags['teacher'], flags['init'])
  if jax.process_index() == 0:
    np.savez(flags['out'], **out)
  print(f'process {jax.process_index()} of {jax.process_count()}: {jax.device_count()} devices, '
        f'loss {float(out["loss1"]):.6f}')


if __name__ == '__main__':
  sys.path.insert(0, '.')
  main(sys.argv)
