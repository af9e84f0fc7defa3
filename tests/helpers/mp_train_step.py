"""One jitted SimCLR train step on a fixed global batch, run by every process of a job.

    python tests/mp_train_step.py --out=FILE [--coordinator_address=... --num_processes=...
        --process_id=...]

`compute(mesh)` builds the tests' tiny model, feeds each process its rows of one fixed global
batch and returns, on host: the loss, the gradients, the new BN statistics and the updated
parameters. Process 0 writes them to FILE (.npz); the test compares them with the same
function run by one process on 8 devices.
"""

import functools
import sys

import numpy as np

GLOBAL_BATCH = 32


def fixed_batch(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Real digits (noise images make this tiny net's gradients ill-conditioned: there, 4 vs 8
  devices in ONE process already differ by 2e-3 in float32) resized to `size`; view 2 flipped."""
  import jax  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import embedded  # pylint: disable=g-import-not-at-top
  images, labels = embedded.load('train')
  x = np.asarray(jax.image.resize(images[:GLOBAL_BATCH].astype(np.float32),
                                  (GLOBAL_BATCH, size, size, 3), 'bilinear'))
  views = np.stack([x, x[:, :, ::-1]], 1).clip(0, 255).round().astype(np.uint8)
  return views, labels[:GLOBAL_BATCH]


def compute(mesh) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from configs import test as test_config  # pylint: disable=g-import-not-at-top
  from simclr_jax import models, optim, sharding, steps, train  # pylint: disable=g-import-not-at-top
  config = test_config.get_config()
  config.train.batch_size = GLOBAL_BATCH
  model = models.build_model(config, 10)
  state = train.make_init_fn(config, model, optim.create_optimizer(config, 4000), mesh)()
  views, labels = fixed_batch(config.data.image_size)
  b = GLOBAL_BATCH // jax.process_count()
  rows = slice(jax.process_index() * b, (jax.process_index() + 1) * b)
  batch = sharding.global_batch({'views': views[rows], 'label': labels[rows]}, mesh)
  grads, metrics, stats = jax.jit(functools.partial(steps.loss_and_grads, config=config,
                                                    mesh=mesh))(state.params, state, batch)
  new_state, _ = jax.jit(functools.partial(
      steps.train_step, config=config, lr_fn=optim.create_learning_rate_fn(config, 4000),
      mesh=mesh))(state, batch)
  host = lambda tree: {jax.tree_util.keystr(k): np.asarray(v.addressable_data(0))
                       for k, v in jax.tree_util.tree_leaves_with_path(tree)}
  out = {'loss': np.asarray(metrics['total_loss'].addressable_data(0))}
  out.update({f'grad{k}': v for k, v in host(grads).items()})
  out.update({f'stats{k}': v for k, v in host(stats).items()})
  out.update({f'params{k}': v for k, v in host(new_state.params).items()})
  return out


def main(argv):
  flags = dict(a[2:].split('=', 1) for a in argv[1:])
  import jax  # pylint: disable=g-import-not-at-top
  from simclr_jax import cluster, sharding  # pylint: disable=g-import-not-at-top
  cluster.initialize(flags.get('coordinator_address'),
                     int(flags['num_processes']) if 'num_processes' in flags else None,
                     int(flags['process_id']) if 'process_id' in flags else None)
  out = compute(sharding.make_mesh())
  if jax.process_index() == 0:
    np.savez(flags['out'], **out)
  print(f'process {jax.process_index()} of {jax.process_count()}: {jax.device_count()} devices, '
        f'loss {float(out["loss"]):.6f}')


if __name__ == '__main__':
  sys.path.insert(0, '.')
  main(sys.argv)
