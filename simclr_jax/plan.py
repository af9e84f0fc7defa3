"""A compile-only plan of a config before renting a pod: per-device memory, FLOPs, wall-clock.

    python -m simclr_jax.plan --config=configs/tpu_v3_128.py [--num_devices=N] [--chip=KEY]

It lowers and compiles the real pretraining step (steps.train_step with the config's model, LARS
state donated, parameters replicated, the batch sharded over 'data') for
config.hardware.num_devices EMULATED CPU devices, never runs it, and prints per device: XLA's
memory analysis split into parameters / optimiser state / batch / temporaries against the chip's
memory (chips.py), XLA's FLOP count beside an analytic one (flops.py), and step time and training
wall-clock at the chip's bf16 peak and at stated utilisations. No data is read: data-set sizes
come from a table (or TFDS metadata if the set is prepared).

Nothing is scaled: the whole step is compiled at the real per-device batch and image size. On a
shared 2-core CPU, ResNet-50 at 224 px lowers in ~3 s and compiles in 15-32 s for 8, 32, 128 or
1024 emulated devices alike (the SPMD partitioner emits one per-device module).
What the numbers are, as measured here:
- XLA's cost analysis counts the partitioned module that ONE device runs: at the same global
  batch 4096, 32 / 128 / 1024 devices gave 6137 / 1535 / 193 GFLOP. It counts only kernel taps
  that land on the input, plus element-wise work: 1.02x flops.py's valid-tap count and 0.986x
  its padded count for R50 at 224 (tests/test_plan.py bounds the former on a small model).
- Memory is XLA:CPU's buffer assignment, which looks pessimistic for TPUs: it puts R50 at 128
  pairs per device at ~36 GiB, yet the official README trains B 4096 on "32 TPU v3s" in ~6 h
  (read as v3-32: 128 pairs per 16 GiB core; our 15%-utilisation row gives 5.9 h for it).
  XLA:CPU computes bf16 convolutions in f32 (visible in its HLO).
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

from simclr_jax import chips
from simclr_jax import eval_plan
from simclr_jax.data import embedded

_FLAGS = {}  # Defined only when run as a program: importing the module must not claim --config.


def _define_flags() -> None:
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
# The paper's speed (100 epochs of R50 at B 4096 on 128 TPU v3 cores in ~1.5 h) as utilisation:
# 31,279 steps x 1.993e14 FLOPs (flops.py) / (5,400 s x 128 x 61.5e12) = 0.147 (test_plan checks).
PAPER_MFU = 0.15
UTILISATIONS = ((1.0, '100% of peak'), (0.40, '40% MFU'), (PAPER_MFU, '15% (paper, TPU v3)'))
MIB = 2 ** 20


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
  from simclr_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  try:
    info = input_pipeline.get_info(config)
  except (input_pipeline.DataNotReadyError, ValueError) as e:
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
  from simclr_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  try:
    info = input_pipeline.get_info(config)
  except (input_pipeline.DataNotReadyError, ValueError) as e:
    raise PlanError(f'sizes of {d.dataset!r} splits {probe!r} / {d.eval_split!r} are not in the '
                    f'plan\'s table and the data set is not prepared: {str(e).splitlines()[0]}'
                    ) from e
  return info.num_probe_train, info.num_eval


def _device_bytes(leaves) -> int:
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in leaves)


def compile_plan(config, num_devices: int, num_train: int, num_classes: int) -> Plan:
  """Lowers and compiles the train step for the first `num_devices` JAX devices."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from simclr_jax import flops  # pylint: disable=g-import-not-at-top
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
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  return Plan(num_devices, count(state.params), count(state.params['encoder']), nbytes,
              float(cost['flops']), flops.forward_macs(padded),
              flops.step_flops(padded, b, proj_dim), flops.step_flops(valid, b, proj_dim),
              lower_s, compile_s)


def _gflop(flops: float) -> str:
  return f'{flops / 1e9:10.2f}' if flops >= 1e9 else f'{flops / 1e9:10.4f}'


def _duration(seconds: float) -> str:
  if seconds < 1:
    return f'{seconds * 1e3:.1f} ms'
  if seconds < 120:
    return f'{seconds:.1f} s'
  return f'{seconds / 60:.1f} min' if seconds < 7200 else f'{seconds / 3600:.2f} h'


def format_plan(config, plan: Plan, chip: chips.Chip, chip_key: str, num_train: int,
                data_source: str, config_path: str) -> str:
  """The printed report: header, compiled line, memory, FLOPs and time tables."""
  m, d, n, b = config.model, config.data, plan.num_devices, config.train.batch_size
  memory, peak, shared = chip.memory_bytes, chip.peak_flops, ''
  if chip_key == 'cpu':  # Emulated devices share one host: each gets 1/n of its RAM and cores.
    memory, peak, shared = memory // n, peak / n, f' (host shared by {n} devices: 1/{n} each)'
  total_steps = num_train * config.train.epochs // b + 1 if config.train.steps <= 0 else None
  steps_100 = num_train * 100 // b + 1  # optim.total_steps's formula at 100 epochs.
  nb, a, av = plan.nbytes, plan.analytic, plan.analytic_valid
  parts = nb['params'] + nb['opt_state'] + nb['other_state'] + nb['batch']
  per_device_flops = a['total'] / n
  lines = [
      f'plan: {config_path} ({config.name}) on {n} x {chip_key}: {chip.name}, '
      f'{memory / 2**30:.2f} GiB, {peak / 1e12:.4g} TFLOP/s per device{shared} [{chip.source}]',
      f'model: ResNet-{m.resnet_depth} x{m.width_multiplier:g} (sk_ratio {m.sk_ratio:g}) '
      f'{m.dtype} at {d.image_size} px; {plan.num_params:,} parameters '
      f'(encoder {plan.encoder_params:,}); {config.optim.optimizer}',
      f'data: {d.dataset} {d.train_split!r} {num_train:,} examples ({data_source}); global batch '
      f'{b} = {b // n} per device; 100 epochs = {steps_100:,} steps'
      + (f'; this config: {total_steps:,} steps' if total_steps not in (None, steps_100) else '')
      + (f'; this config: train.steps={config.train.steps}' if total_steps is None else ''),
      f'compiled: steps.train_step (jit, state donated, params replicated, batch sharded over '
      f'\'data\') for {n} emulated CPU devices at the real per-device batch ({b // n} pairs = '
      f'{2 * b // n} views of {d.image_size} px) and the full model: nothing scaled; '
      f'lower {plan.lower_s:.1f} s, compile {plan.compile_s:.1f} s',
      '',
      f'{"memory per device (XLA memory_analysis)":58s} {"MiB":>10s}',
      f'  {"parameters (float32)":56s} {nb["params"] / MIB:10.1f}',
      f'  {"optimiser state":56s} {nb["opt_state"] / MIB:10.1f}',
      f'  {"BN statistics + step":56s} {nb["other_state"] / MIB:10.1f}',
      f'  {"batch input (uint8 views, int32 labels)":56s} {nb["batch"] / MIB:10.1f}',
      f'  {"= arguments (argument_size_in_bytes)":56s} {nb["arguments"] / MIB:10.1f}'
      + ('' if nb['arguments'] == parts else '  (!= sum of the parts above)'),
      f'  {"temporaries (temp_size_in_bytes)":56s} {nb["temp"] / MIB:10.1f}',
      f'  {"outputs not aliased to donated inputs":56s} '
      f'{(nb["outputs"] - nb["alias"]) / MIB:10.1f}',
      f'  {"total":56s} {nb["total"] / MIB:10.1f}  = {nb["total"] / memory:.1%} of '
      f'{memory / 2**30:.2f} GiB: ' + (f'headroom {1 - nb["total"] / memory:.1%}'
                                       if nb['total'] <= memory else
                                       'OVER the chip\'s memory by XLA:CPU\'s count (see notes)'),
      '',
      f'{"FLOPs per step per device":58s} {"GFLOP":>10s}',
      f'  {"XLA cost_analysis (per device: the partitioned module)":56s} '
      f'{_gflop(plan.xla_flops)}',
      f'  {"analytic, padded taps counted (torchvision convention)":56s} '
      f'{_gflop(per_device_flops)}  XLA/analytic {plan.xla_flops / per_device_flops:.3f}',
      f'  {"analytic, only taps on the input (XLA convention)":56s} '
      f'{_gflop(av["total"] / n)}  XLA/analytic {plan.xla_flops * n / av["total"]:.3f}',
      f'  analytic (padded), global: model 2 FLOP/MAC x (3 x {plan.forward_macs / 1e9:.4g} GMAC '
      f'forward per view, less the first conv\'s and the probe\'s input grads) x 2 views x {b} = '
      f'{a["model"] / 1e9:.6g} GFLOP',
      f'    + NT-Xent 3 x 2 FLOP/MAC x (2N)^2 x d = 24 N^2 d (N={b}, d={a["loss"] // (24 * b * b)})'
      f' = {a["loss"] / 1e9:.4g} GFLOP; / {n} devices',
      '',
      f'time at {peak / 1e12:.4g} TFLOP/s per device ({chip_key} peak), from the analytic '
      'FLOPs (padded), compute only',
      f'  {"utilisation":24s} {"step":>10s} {"examples/s/device":>18s} {"epoch":>10s} '
      f'{"100 epochs":>11s}' + (f' {"this config":>12s}' if total_steps not in (None, steps_100)
                                 else ''),
  ]
  for mfu, label in UTILISATIONS:
    step_s = per_device_flops / (peak * mfu)
    lines.append(
        f'  {label:24s} {_duration(step_s):>10s} {b / n / step_s:18.1f} '
        f'{_duration(step_s * num_train / b):>10s} {_duration(step_s * steps_100):>11s}'
        + (f' {_duration(step_s * total_steps):>12s}' if total_steps not in (None, steps_100)
           else ''))
  lines += [
      '',
      'notes: memory is XLA:CPU\'s buffer assignment for this program. XLA:CPU computes bfloat16',
      '  convolutions in float32 and fuses differently from the TPU/GPU compilers, which also',
      '  rematerialise to fit HBM: read it as the CPU compiler\'s estimate, not a measurement on',
      '  the chip. Times assume a compute-bound step at that utilisation; the input pipeline and',
      '  collectives are not modelled.']
  return '\n'.join(lines)


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
    num_train, num_classes, source = dataset_size(config)
    num_probe, num_eval = eval_sizes(config)
    plan = compile_plan(config, n, num_train, num_classes)
    evals = eval_plan.compile_eval_plan(config, n, num_probe, num_eval, num_classes)
  except PlanError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  chip = chips.get(chip_key)
  print(format_plan(config, plan, chip, chip_key, num_train, source,
                    config_flags.get_config_filename(flags.FLAGS['config'])))
  print()
  print(eval_plan.format_eval(evals, eval_plan.eval_cost(config, num_train, num_probe, num_eval),
                              chip.memory_bytes // n if chip_key == 'cpu' else chip.memory_bytes))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
