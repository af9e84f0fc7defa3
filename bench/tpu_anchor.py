"""Our pretraining step against an independent anchor, both compiled by the TPU compiler.

    python bench/tpu_anchor.py [--topology=v3:4x4] [--views_per_core=256] [--image_size=224]

The anchor is a supervised ResNet-50 step written here apart from simclr_jax, in the manner of
Flax's examples/imagenet (nn.Conv/nn.BatchNorm in bf16, stem 7x7/2 + max pool, bottleneck blocks
striding on the 3x3 conv, zero-init last BN scale, softmax cross-entropy, L2 weight decay, SGD
with Nesterov momentum), jitted with the batch sharded over every device of the topology. Ours
is steps.train_step with configs/imagenet.py's model (ResNet-50, bf16, the projection head,
NT-Xent over the global batch, LARS) at the same views per core. Both are compiled, never run
(libtpu on a CPU machine: pip install -e '.[tpu]'); the table gives per core and per view what
the TPU compiler says: FLOPs, bytes accessed, the cost model's time, and memory. Prints Markdown.
"""

import argparse
import contextlib
import functools
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ['JAX_PLATFORMS'] = 'cpu'

from simclr_jax.plan import tpu  # pylint: disable=wrong-import-position


def anchor_resnet50(dtype):
  """A ResNet-50 classifier written as Flax's ImageNet example writes it (not simclr_jax's)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  class Bottleneck(nn.Module):
    filters: int
    strides: int

    @nn.compact
    def __call__(self, x, train):
      conv = functools.partial(nn.Conv, use_bias=False, dtype=dtype)
      norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                               epsilon=1e-5, dtype=dtype)
      residual = x
      y = nn.relu(norm()(conv(self.filters, (1, 1))(x)))
      y = nn.relu(norm()(conv(self.filters, (3, 3), self.strides)(y)))
      y = norm(scale_init=nn.initializers.zeros)(conv(4 * self.filters, (1, 1))(y))
      if residual.shape != y.shape:
        residual = norm()(conv(4 * self.filters, (1, 1), self.strides)(residual))
      return nn.relu(residual + y)

  class ResNet50(nn.Module):
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x, train=True):
      x = nn.Conv(64, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False, dtype=dtype)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)(x)
      x = nn.max_pool(nn.relu(x), (3, 3), (2, 2), padding='SAME')
      for i, blocks in enumerate((3, 4, 6, 3)):
        for j in range(blocks):
          x = Bottleneck(64 * 2 ** i, 2 if i > 0 and j == 0 else 1)(x, train)
      x = jnp.mean(x, axis=(1, 2))
      return nn.Dense(self.num_classes, dtype=dtype)(x).astype(jnp.float32)

  return ResNet50()


def compile_anchor(devices, views_per_core: int, size: int):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  model = anchor_resnet50(jnp.bfloat16)
  tx = optax.sgd(0.1, momentum=0.9, nesterov=True)
  mesh = Mesh(np.asarray(devices), ('batch',), axis_types=(jax.sharding.AxisType.Auto,))
  rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P('batch'))

  def init():
    v = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    return v['params'], v['batch_stats'], tx.init(v['params'])

  abstract = lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), tree)
  params, stats, opt = abstract(jax.eval_shape(init))
  b = views_per_core * len(devices)
  images = jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8, sharding=shard)
  labels = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=shard)

  def step(params, stats, opt, images, labels):
    x = images.astype(jnp.float32) / 255.0

    def loss_fn(p):
      logits, new = model.apply({'params': p, 'batch_stats': stats}, x, train=True,
                                mutable=['batch_stats'])
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      l2 = sum(jnp.sum(w ** 2) for w in jax.tree.leaves(p) if w.ndim > 1)
      return ce + 1e-4 / 2 * l2, new['batch_stats']

    grads, new_stats = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), new_stats, opt

  fn = jax.jit(step, donate_argnums=(0, 1, 2))
  t = time.perf_counter()
  compiled = fn.lower(params, stats, opt, images, labels).compile()
  return compiled, time.perf_counter() - t


def row(name, compiled, views, seconds):
  from simclr_jax.plan import step as plan_step  # pylint: disable=g-import-not-at-top
  c, m = plan_step.cost(compiled), plan_step.memory(compiled)
  t = c['optimal_seconds']
  return (f'| {name} | {c["flops"] / views / 1e9:.2f} | {c["bytes accessed"] / views / 2**20:.1f} '
          f'| {t / views * 1e6:.1f} | {m["total"] / 2**30:.2f} | {seconds:.0f} |'), c, t


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--topology', default='v3:4x4')
  parser.add_argument('--views_per_core', type=int, default=256)
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--ablate', action='store_true',
                      help='Also compile ours without each difference from the anchor in turn, and with the '
      'two-pass BN variance.')
  args = parser.parse_args()
  devices = tpu.devices(args.topology)
  from configs import imagenet  # pylint: disable=g-import-not-at-top
  from simclr_jax.plan import step as plan_step  # pylint: disable=g-import-not-at-top
  from simclr_jax.plan import jobs as plan_jobs  # pylint: disable=g-import-not-at-top
  config = imagenet.get_config()
  config.data.image_size = args.image_size
  config.train.batch_size = args.views_per_core // 2 * len(devices)
  t = time.perf_counter()
  ours = plan_step.compile_step(*plan_jobs.abstract_step(config, devices, 1_281_167, 1000)[:3])[0]
  ours_s = time.perf_counter() - t
  anchor, anchor_s = compile_anchor(devices, args.views_per_core, args.image_size)
  v = args.views_per_core
  print(f'{tpu.describe(devices, args.topology)}; {v} views of {args.image_size} px per core; '
        'per core, TPU compiler (cost model, not a measurement)\n')
  print('| step | GFLOP per view | MiB accessed per view | cost-model us per view | memory GiB '
        '| compile s |')
  print('|---|---|---|---|---|---|')
  r1, c1, t1 = row('simclr_jax pretraining (R50 + head + NT-Xent + LARS)', ours, v, ours_s)
  r2, c2, t2 = row('anchor: Flax-example-style supervised R50 (SGD)', anchor, v, anchor_s)
  print(r1)
  print(r2)
  print(f'\nours / anchor: FLOPs {c1["flops"] / c2["flops"]:.3f}, bytes accessed '
        f'{c1["bytes accessed"] / c2["bytes accessed"]:.3f}, cost-model time {t1 / t2:.3f}')
  if args.ablate:
    ablate(config, devices, v, c2, t2)


# Ours, with one difference from the anchor removed at a time (then all of them).
ABLATIONS = {
    'no online probe (train.lineareval_while_pretraining=False)':
        {'train.lineareval_while_pretraining': False},
    'SGD momentum instead of LARS (optim.optimizer=momentum)': {'optim.optimizer': 'momentum'},
    'no projection head (model.proj_head_mode=none)': {'model.proj_head_mode': 'none'},
    'two-pass BN variance (flax use_fast_variance=False; ours until 2026-12-06)':
        {'fast_variance': False},
}


@contextlib.contextmanager
def _bn_variance(fast):
  """resnet.py's BatchNorm with use_fast_variance=fast (None: as resnet.py builds it), for one
  compile: one pass E[x^2] - mean^2 (ours, the official code's, the anchor's) or two passes."""
  from simclr_jax.models import resnet  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  proxy = types.SimpleNamespace(**{k: getattr(nn, k) for k in dir(nn) if not k.startswith('__')})
  proxy.BatchNorm = lambda **kw: nn.BatchNorm(**dict(kw, use_fast_variance=fast))
  saved = resnet.nn
  resnet.nn = saved if fast is None else proxy
  try:
    yield
  finally:
    resnet.nn = saved


def ablate(config, devices, views, anchor_cost, anchor_t):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from simclr_jax.plan import step as plan_step  # pylint: disable=g-import-not-at-top
  from simclr_jax.plan import jobs as plan_jobs  # pylint: disable=g-import-not-at-top
  print('\n| ours, with | GFLOP per view | MiB accessed per view | cost-model us per view | '
        'memory GiB | compile s | bytes / anchor | time / anchor |')
  print('|---|---|---|---|---|---|---|---|')
  every = {k: v for d in ABLATIONS.values() for k, v in d.items() if k != 'fast_variance'}
  for name, change in list(ABLATIONS.items()) + [('the first three together', every)]:
    c = ml_collections.ConfigDict(config.to_dict())
    for key, value in change.items():
      if key != 'fast_variance':
        group, field = key.split('.')
        c[group][field] = value
    t = time.perf_counter()
    with _bn_variance(change.get('fast_variance')):
      compiled = plan_step.compile_step(
          *plan_jobs.abstract_step(c, devices, 1_281_167, 1000)[:3])[0]
    text, cost, secs = row(name, compiled, views, time.perf_counter() - t)
    print(f'{text} {cost["bytes accessed"] / anchor_cost["bytes accessed"]:.3f} | '
          f'{secs / anchor_t:.3f} |', flush=True)


if __name__ == '__main__':
  main()
