"""A compile-only plan of a config before renting a pod: per-device memory, FLOPs, wall-clock.

    python -m simclr_jax.plan --config=configs/tpu_v3_128.py [--num_devices=N] [--chip=KEY]

It lowers and compiles the real pretraining step (steps.train_step with the config's model, LARS
state donated, parameters replicated, the batch sharded over 'data') for
config.hardware.num_devices EMULATED CPU devices, never runs it, and prints per device: XLA's
memory analysis split into parameters / optimiser state / batch / temporaries against the chip's
memory (chips.py), XLA's FLOP count beside an analytic one (flops.py), and step time and training
wall-clock at the chip's bf16 peak and at stated utilisations. No data is read: data-set sizes
come from a table (or TFDS metadata if the set is prepared).

Nothing is scaled: the whole step is compiled at the real per-device batch and image size (the
SPMD partitioner emits one per-device module, so 8 or 1024 emulated devices compile alike).
XLA's cost analysis counts the partitioned module that ONE device runs. Memory is XLA:CPU's
buffer assignment, which can be far from a TPU's (XLA:CPU computes bf16 convolutions in f32);
docs/pods.md compares it with the published runs.
The plan then compiles the evaluation functions (eval_plan.py: kNN, linear probe, feature
extraction's store, accuracy counts) for the config's real split sizes with features sharded over
the same devices, prints each one's per-device memory, and what evaluation costs against the run.
XLA_FLAGS must be set before JAX is imported, so `main` reads the config (config files import
only ml_collections) and only then imports JAX; functions that need JAX import it locally.
"""

import dataclasses
import functools
import os
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from simclr_jax.plan import chips
from simclr_jax.plan import eval_plan
from simclr_jax.plan import report
from simclr_jax.data import embedded

_FLAGS = {}  # Defined only when run as a program: importing the module must not claim --config.


def define_flags() -> None:
  """The plan's flags; defined by __main__ only, so importing this module claims no --config."""
  _FLAGS['config'] = config_flags.DEFINE_config_file(
      'config', None, 'Path to an ml_collections config file, e.g. configs/tpu_v3_128.py.',
      lock_config=True)
  _FLAGS['num_devices'] = flags.DEFINE_integer('num_devices', None,
                                               'Overrides config.hardware.num_devices.')
  _FLAGS['chip'] = flags.DEFINE_string('chip', None,
                                       f'Overrides config.hardware.chip; one of {chips.KEYS}.')

# Train-split sizes from the TFDS catalogue, so a plan needs no prepared data: {name: (classes,
# {split: examples})}.
KNOWN_DATASETS = {
    'imagenet2012': (1000, {'train': 1_281_167, 'validation': 50_000}),
    'cifar10': (10, {'train': 50_000, 'test': 10_000}),
    'cifar100': (100, {'train': 50_000, 'test': 10_000}),
    'stl10': (10, {'train': 5_000, 'test': 8_000, 'unlabelled': 100_000}),
    embedded.NAME: (embedded.NUM_CLASSES,
                    {'train': embedded.TRAIN_PER_CLASS * embedded.NUM_CLASSES, 'test': 1_000}),
}


class PlanError(ValueError):
  """A plan that cannot be made; the message says which setting and what would work."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the compiler and the analytic count say about one step. Bytes and XLA FLOPs are per
  device; `analytic` and `analytic_valid` (flops.step_flops) are global."""
  num_devices: int
  num_params: int
  encoder_params: int
  nbytes: dict
  xla_flops: float
  forward_macs: int
  analytic: dict
  analytic_valid: dict
  lower_s: float
  compile_s: float


def dataset_size(config) -> tuple[int, int, str]:
  """(train examples, classes, where the numbers came from), without reading any data."""
  d = config.data
  if d.dataset in KNOWN_DATASETS:
    classes, splits = KNOWN_DATASETS[d.dataset]
    if d.train_split in splits:
      return splits[d.train_split], classes, 'known size; no data read'
  from simclr_jax.data import sources  # pylint: disable=g-import-not-at-top
  try:
    info = sources.get_info(config)
  except (sources.DataNotReadyError, ValueError) as e:
    raise PlanError(f'size of {d.dataset!r} split {d.train_split!r} is not in the plan\'s table '
                    f'and the data set is not prepared: {str(e).splitlines()[0]}') from e
  return info.num_train, info.num_classes, 'TFDS metadata'


def eval_sizes(config) -> tuple[int, int]:
  """(examples in the probe split, in the eval split): the table's, or TFDS metadata's."""
  d = config.data
  probe = d.probe_train_split or d.train_split
  if d.dataset in KNOWN_DATASETS:
    splits = KNOWN_DATASETS[d.dataset][1]
    if probe in splits and d.eval_split in splits:
      return splits[probe], splits[d.eval_split]
  from simclr_jax.data import sources  # pylint: disable=g-import-not-at-top
  try:
    info = sources.get_info(config)
  except (sources.DataNotReadyError, ValueError) as e:
    raise PlanError(f'sizes of {d.dataset!r} splits {probe!r} / {d.eval_split!r} are not in the '
                    f'plan\'s table and the data set is not prepared: {str(e).splitlines()[0]}'
                    ) from e
  return info.num_probe_train, info.num_eval


def _device_bytes(leaves) -> int:
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in leaves)


def compile_plan(config, num_devices: int, num_train: int, num_classes: int) -> Plan:
  """Lowers and compiles the train step for the first `num_devices` JAX devices."""
  from clu import parameter_overview  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from simclr_jax.plan import flops  # pylint: disable=g-import-not-at-top
  from simclr_jax import models  # pylint: disable=g-import-not-at-top
  from simclr_jax import optim  # pylint: disable=g-import-not-at-top
  from simclr_jax import sharding  # pylint: disable=g-import-not-at-top
  from simclr_jax import steps  # pylint: disable=g-import-not-at-top
  from simclr_jax.models import resnet  # pylint: disable=g-import-not-at-top
  if jax.device_count() < num_devices:
    raise PlanError(f'{num_devices} devices wanted, {jax.device_count()} present: set XLA_FLAGS='
                    f'--xla_force_host_platform_device_count={num_devices} before JAX starts.')
  mesh = sharding.make_mesh(jax.devices()[:num_devices])
  model = models.build_model(config, num_classes)
  size = config.data.image_size
  # As train.make_init_fn builds it (replicated), but abstract: nothing is allocated.
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
  t = time.perf_counter()
  lowered = step.lower(state, batch)
  lower_s = time.perf_counter() - t
  compiled = lowered.compile()
  compile_s = time.perf_counter() - lower_s - t
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # Older JAX: one dict per module.
  nbytes = {
      'params': _device_bytes(jax.tree.leaves(state.params)),
      'opt_state': _device_bytes(jax.tree.leaves(state.opt_state)),
      'other_state': _device_bytes(jax.tree.leaves((state.step, state.batch_stats))),
      'batch': _device_bytes(jax.tree.leaves(batch)),
      'arguments': mem.argument_size_in_bytes, 'temp': mem.temp_size_in_bytes,
      'outputs': mem.output_size_in_bytes, 'alias': mem.alias_size_in_bytes}
  nbytes['total'] = nbytes['arguments'] + nbytes['temp'] + nbytes['outputs'] - nbytes['alias']
  m = config.model
  proj_dim = (resnet.feature_dim(m.resnet_depth, m.width_multiplier)
              if m.proj_head_mode == 'none' else m.proj_out_dim)
  padded = flops.layers(model, (size, size, 3))
  valid = flops.layers(model, (size, size, 3), valid_only=True)
  count = lambda tree: int(parameter_overview.count_parameters(tree))
  return Plan(num_devices, count(state.params), count(state.params['encoder']), nbytes,
              float(cost['flops']), flops.forward_macs(padded),
              flops.step_flops(padded, b, proj_dim), flops.step_flops(valid, b, proj_dim),
              lower_s, compile_s)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _FLAGS['config'].value
  chip_key = _FLAGS['chip'].value or config.hardware.chip
  n = _FLAGS['num_devices'].value or config.hardware.num_devices
  try:
    if chip_key not in chips.KEYS:
      raise PlanError(f'unknown chip {chip_key!r} (--chip / config.hardware.chip); allowed: '
                      f'{list(chips.KEYS)}')
    if n < 1 or config.train.batch_size % n:
      raise PlanError(f'config.train.batch_size={config.train.batch_size} is not a positive '
                      f'multiple of num_devices={n}')
    if config.mode != 'pretrain':
      raise PlanError(f'config.mode={config.mode!r}: the plan covers pretraining only')
    if 'jax' in sys.modules:
      raise PlanError('JAX was imported before the device count could be set')
    flags_ = [f for f in os.environ.get('XLA_FLAGS', '').split()
              if not f.startswith('--xla_force_host_platform_device_count')]
    os.environ['XLA_FLAGS'] = ' '.join(flags_ + [f'--xla_force_host_platform_device_count={n}'])
    os.environ['JAX_PLATFORMS'] = 'cpu'
    from simclr_jax.cpu import xla_cpu  # pylint: disable=g-import-not-at-top
    xla_cpu.configure()
    num_train, num_classes, source = dataset_size(config)
    num_probe, num_eval = eval_sizes(config)
    plan = compile_plan(config, n, num_train, num_classes)
    evals = eval_plan.compile_eval_plan(config, n, num_probe, num_eval, num_classes)
  except PlanError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  chip = chips.get(chip_key)
  print(report.format_plan(config, plan, chip, chip_key, num_train, source,
                    config_flags.get_config_filename(flags.FLAGS['config'])))
  print()
  print(eval_plan.format_eval(evals, eval_plan.eval_cost(config, num_train, num_probe, num_eval),
                              chip.memory_bytes // n if chip_key == 'cpu' else chip.memory_bytes))

