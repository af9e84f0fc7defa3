"""Command line: python -m simclr_jax.main --config=configs/default.py --workdir=DIR.

Flags only; the work is `train.train_and_evaluate(config, workdir)` (config.mode 'pretrain') or
`linear_eval.run(config, workdir)` ('linear_eval' / 'finetune', e.g. configs/linear_eval.py) or
`distill.run(config, workdir)` ('distill', SimCLRv2's third stage, e.g. configs/distill.py).
Override any config field with --config.<group>.<field>=value (the config is locked, so a
mistyped key fails).
On multi-host TPU pods every host runs this same command.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Before TF is imported anywhere.

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from simclr_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to an ml_collections config file, e.g. configs/default.py.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard '
                               'summaries, config.json and results.json (local or gs://).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'Multi-process runs outside TPU VMs/SLURM: HOST:PORT of '
    'process 0, the same on every process (or env JAX_COORDINATOR_ADDRESS).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Multi-process runs: how many processes (or env JAX_NUM_PROCESSES).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'Multi-process runs: this process, 0..num_processes-1 (or env '
    'JAX_PROCESS_ID).')
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Resume a workdir whose checkpoints were trained with a '
    'config that differs in the model, data or optimiser (refused otherwise).')
flags.mark_flags_as_required(['config', 'workdir'])

def _hide_accelerators_from_tf() -> None:
  """TF is only used for tf.data on the host: it must never grab GPU/TPU memory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  try:
    tf.config.set_visible_devices([], 'TPU')
  except (RuntimeError, ValueError):
    pass


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax/TF INFO chatter would bury the progress lines.
  try:  # The config file loads lazily: touch it before anything expensive.
    config = _CONFIG.value
    config.mode  # pylint: disable=pointless-statement
  except (OSError, ImportError, SyntaxError, AttributeError) as e:  # Missing or broken file.
    lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()] or [repr(e)]
    path = next((a.split('=', 1)[1] for a in sys.argv if a.startswith('--config=')), '?')
    cli.fail(f'--config={path} cannot be loaded ({lines[-1][:200]}); pass an ml_collections config '
          'file with get_config(), e.g. configs/default.py.')
  _hide_accelerators_from_tf()
  from simclr_jax.cpu import xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.configure()  # Before JAX starts a backend: multi-threaded XLA:CPU convolutions.
  import jax  # pylint: disable=g-import-not-at-top
  from simclr_jax import cluster  # pylint: disable=g-import-not-at-top
  try:  # Before anything touches a backend: every host of a pod runs this same command.
    how = cluster.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  except cluster.ClusterError as e:
    cli.fail(str(e))
  from simclr_jax.checkpoints import checkpointing  # pylint: disable=g-import-not-at-top
  from simclr_jax import distill  # pylint: disable=g-import-not-at-top
  from simclr_jax import linear_eval  # pylint: disable=g-import-not-at-top
  from simclr_jax import loop  # pylint: disable=g-import-not-at-top
  from simclr_jax import train  # pylint: disable=g-import-not-at-top
  from simclr_jax import validation  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import sources  # pylint: disable=g-import-not-at-top
  from simclr_jax import progress  # pylint: disable=g-import-not-at-top
  progress.say(f'JAX: {how}; process {jax.process_index()} of {jax.process_count()}, '
               f'{jax.device_count()} {jax.default_backend()} device(s) '
               f'({jax.local_device_count()} local).')
  jobs = {'pretrain': train.train_and_evaluate, 'linear_eval': linear_eval.run,
          'finetune': linear_eval.run, 'distill': distill.run}
  try:
    if config.mode not in jobs:
      raise validation.ConfigError(f'config.mode={config.mode!r} is invalid; allowed: '
                                   f'{tuple(jobs)}.')
    jobs[config.mode](config, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except (validation.ConfigError, sources.DataNotReadyError,
          input_pipeline.DataConfigError, sources.UnlabelledError, PermissionError,
          cluster.ClusterError, checkpointing.ConfigChangeError) as e:
    cli.fail(str(e))
  except loop.Preempted as e:
    progress.say(str(e))
    sys.exit(cli.EXIT_PREEMPTED)
  except (progress.NonFiniteLossError, checkpointing.RestoreError, loop.CorruptDataError) as e:
    cli.fail(str(e), code=1)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
