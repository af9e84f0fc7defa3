"""A compile-only plan of a config before renting a pod: per-device memory, FLOPs, wall-clock.

    python -m simclr_jax.plan --config=configs/tpu_v3_128.py [--topology=v3:8x8] [--max_batch]

For a TPU chip (config.hardware.chip or --chip: tpu_v3, tpu_v4, tpu_v5e, tpu_v5p, tpu_v6e) it
compiles the real pretraining step (steps.train_step: the config's model, LARS state donated,
parameters replicated, the batch sharded over 'data', on-device augmentation if aug.on_device)
with the TPU COMPILER for the slice's topology (plan/tpu.py; libtpu runs on a CPU machine:
`pip install -e '.[tpu]'`), never runs it, and prints per device what that compiler says: memory
split into parameters / optimiser state / batch / temporaries / outputs against the chip's HBM,
FLOPs and bytes accessed, the cost model's step time and the MFU and wall-clock it implies, and
the collectives of the program (plan/collectives.py). The devices carry their hosts
(process_index), so the program is the one a pod's hosts compile. --max_batch bisects the global
batch that fits with 10% headroom.
For GPUs and CPUs, which libtpu cannot target, the step is compiled by XLA:CPU for emulated CPU
devices (--compiler=cpu forces this for TPUs too): an estimate, labelled as one (XLA:CPU computes
bf16 convolutions in float32 and does not rematerialise).
Nothing is scaled: the whole step is compiled at the real per-device batch and image size. No data
is read: data-set sizes come from a table (or TFDS metadata if the set is prepared). The plan then
compiles the evaluation functions (eval_plan.py) for the config's real split sizes with features
sharded over the same devices, and prints each one's per-device memory.
XLA_FLAGS must be set before JAX is imported, so `main` reads the config (config files import
only ml_collections) and only then imports JAX; functions that need JAX import it locally.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Before TF is imported anywhere.

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from ml_collections import config_flags

from simclr_jax import cli
from simclr_jax.plan import chips
from simclr_jax.plan import eval_plan
from simclr_jax.plan import report
from simclr_jax.plan import tpu
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
  _FLAGS['topology'] = flags.DEFINE_string(
      'topology', None, "A TPU slice for the TPU compiler, e.g. 'v3:8x8' (v3-128), 'v4:2x2x4' "
      "(v4-32), 'v5e:4x4'; default: the usual slice of num_devices devices of the chip.")
  _FLAGS['compiler'] = flags.DEFINE_enum(
      'compiler', 'auto', ['auto', 'cpu'], "'auto': the TPU compiler for TPU chips, XLA:CPU "
      "emulation otherwise; 'cpu': XLA:CPU emulation for every chip.")
  _FLAGS['max_batch'] = flags.DEFINE_bool(
      'max_batch', False, 'Also bisect the largest global batch whose step fits the device with '
      '10% headroom (one compile per try).')
  _FLAGS['eval'] = flags.DEFINE_bool('eval', True, 'Also compile the evaluation functions.')

# Train-split sizes from the TFDS catalogue, so a plan needs no prepared data: {name: (classes,
# {split: examples})}.
KNOWN_DATASETS = {
    'imagenet2012': (1000, {'train': 1_281_167, 'validation': 50_000}),
    'cifar10': (10, {'train': 50_000, 'test': 10_000}),
    'cifar100': (100, {'train': 50_000, 'test': 10_000}),
    'stl10': (10, {'train': 5_000, 'test': 8_000, 'unlabelled': 100_000}),
    'imagenet2012_subset/1pct': (1000, {'train': 12_811, 'validation': 50_000}),
    'imagenet2012_subset/10pct': (1000, {'train': 128_116, 'validation': 50_000}),
    **{name: (m.NUM_CLASSES, dict(m.SPLIT_SIZES)) for name, m in embedded.SETS.items()},
}


MODES = ('pretrain', 'linear_eval', 'finetune', 'distill')


class PlanError(ValueError):
  """A plan that cannot be made; the message says which setting and what would work."""


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


def _architecture(config):
  """(config, teacher's config or None, how they were found) for linear_eval / finetune /
  distill: the model fields of config.init_checkpoint's run where it is set (as the job takes
  them), else the config's own; distill's teacher from distill.teacher_checkpoint's run, else
  the student's architecture (self-distillation)."""
  if config.mode == 'pretrain':
    return config, None, ''
  from simclr_jax import validation  # pylint: disable=g-import-not-at-top
  from simclr_jax.checkpoints import pretrained  # pylint: disable=g-import-not-at-top
  try:
    teacher, note = None, ''
    if config.mode == 'distill':
      if config.distill.teacher_checkpoint:
        from simclr_jax import distill  # pylint: disable=g-import-not-at-top
        found = distill.locate_teacher(config)
        config, pre = distill.student_config(config, found)  # As distill.run takes them.
        return config, found.config, (
            f'; architecture from {pre.workdir} (step {pre.step})' if pre else
            '; architecture from this config (no init_checkpoint)') + (
                f'; teacher from {found.workdir} (step {found.step})')
      else:
        note = '; teacher: the student\'s architecture (no distill.teacher_checkpoint)'
    if not config.init_checkpoint:
      return config, teacher, '; architecture from this config (no init_checkpoint)' + note
    pre = pretrained.pretraining_run(config)
  except validation.ConfigError as e:
    raise PlanError(str(e)) from e
  return (pretrained.merged_config(config, pre.config), teacher,
          f'; architecture from {pre.workdir} (step {pre.step})' + note)


def _setup(config) -> tuple[str, list, object, object]:
  """(chip key, devices to compile for, per-device chips.Chip, TPU topology or None) from the
  flags and config. Sets
  the environment before JAX starts: emulated CPU devices, or JAX on CPU beside libtpu."""
  chip_key = _FLAGS['chip'].value or config.hardware.chip
  topology = _FLAGS['topology'].value
  try:
    if topology:
      key = tpu.chip_key(topology)
      if _FLAGS['chip'].value and _FLAGS['chip'].value != key:
        raise PlanError(f'--chip={chip_key} but --topology={topology} is a {key} slice')
      chip_key = key
    if chip_key not in chips.KEYS:
      raise PlanError(f'unknown chip {chip_key!r} (--chip / config.hardware.chip); allowed: '
                      f'{list(chips.KEYS)}')
    if 'jax' in sys.modules:
      raise PlanError('JAX was imported before the device count could be set')
    n = _FLAGS['num_devices'].value or config.hardware.num_devices
    os.environ['JAX_PLATFORMS'] = 'cpu'  # Compile-only: never claim a local accelerator.
    use_tpu = chip_key in tpu.GENERATIONS and _FLAGS['compiler'].value == 'auto'
    if use_tpu:
      if not tpu.available():
        raise PlanError(tpu.INSTALL + '; or --compiler=cpu for an XLA:CPU estimate')
      topology = topology or tpu.default_topology(chip_key, n)
      devices = tpu.devices(topology)
      return (chip_key, devices, tpu.device_chip(chips.get(chip_key), chip_key, devices),
              topology)
    if topology:
      raise PlanError(f'--topology={topology} needs the TPU compiler (--compiler=auto)')
    flags_ = [f for f in os.environ.get('XLA_FLAGS', '').split()
              if not f.startswith('--xla_force_host_platform_device_count')]
    os.environ['XLA_FLAGS'] = ' '.join(flags_ + [f'--xla_force_host_platform_device_count={n}'])
    from simclr_jax.cpu import xla_cpu  # pylint: disable=g-import-not-at-top
    xla_cpu.configure()
    import jax  # pylint: disable=g-import-not-at-top
    return chip_key, jax.devices()[:n], chips.get(chip_key), None
  except tpu.TopologyError as e:
    raise PlanError(str(e)) from e


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _FLAGS['config'].value
  from simclr_jax.plan import step  # pylint: disable=g-import-not-at-top
  try:
    if config.mode not in MODES:
      raise PlanError(f'config.mode={config.mode!r}: the plan covers {MODES}')
    chip_key, devices, chip, topology = _setup(config)
    config, teacher_config, arch_source = _architecture(config)
    n = len(devices)
    if config.train.batch_size % n:
      raise PlanError(f'config.train.batch_size={config.train.batch_size} is not a multiple of '
                      f'the {n} devices compiled for ({tpu.describe(devices)})')
    num_train, num_classes, source = dataset_size(config)
    if config.mode != 'pretrain' and config.data.label_fraction < 1:
      num_train = max(1, int(num_train * config.data.label_fraction))
      source += f', label_fraction {config.data.label_fraction}'
    source += arch_source
    num_probe, num_eval = eval_sizes(config)
  except PlanError as e:
    cli.print_error(f'{e}')
    sys.exit(2)
  memory = chip.memory_bytes // n if chip_key == 'cpu' else chip.memory_bytes
  path = config_flags.get_config_filename(flags.FLAGS['config'])
  try:
    plan = step.compile_plan(config, devices, num_train, num_classes, teacher_config)
  except step.DoesNotFit as e:
    print(report.format_header(config, chip, chip_key, devices, topology, num_train, source, path))
    print(f'\nDOES NOT FIT: the TPU compiler ran out of memory: {e}\n'
          'Try --max_batch for the largest batch that fits, --config.model.remat=True, or a '
          'smaller --config.train.batch_size.')
    plan = None
  if plan is not None:
    print(report.format_plan(config, plan, chip, chip_key, devices, topology, num_train, source,
                             path))
  if _FLAGS['eval'].value and config.mode != 'pretrain':
    print(f'\n(the evaluation plan covers pretraining\'s monitors; {config.mode} evaluates '
          'top-1 from logits, one forward pass per eval image)')
  elif _FLAGS['eval'].value:
    evals = eval_plan.compile_eval_plan(config, devices, num_probe, num_eval, num_classes)
    print()
    print(eval_plan.format_eval(evals, eval_plan.eval_cost(config, num_train, num_probe,
                                                           num_eval), memory,
                                'TPU' if devices[0].platform == 'tpu' else 'XLA:CPU'))
  if _FLAGS['max_batch'].value:
    print(f'\nlargest global batch that fits with 10% headroom ({0.9 * memory / 2**30:.2f} GiB '
          f'per device), by the {"TPU" if devices[0].platform == "tpu" else "XLA:CPU"} compiler:')
    best, _ = step.max_batch(config, devices, num_train, num_classes, memory,
                             teacher_config=teacher_config)
    print(f'max batch: {best} ({best // n} per device)' if best else
          'max batch: none fits, not even 8 per device')
  if plan is None:
    sys.exit(1)
