"""Test-wide setup: 8 emulated CPU devices, set before JAX is imported anywhere; helpers (tiny data
sets, the multi-process launcher, reference models) live in tests/helpers/ (pytest.ini's
pythonpath).

Every sharding test runs on these 8 devices and compares against 1 device, so collectives are
exercised on a laptop.
"""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from simclr_jax.cpu import xla_cpu  # pylint: disable=g-import-not-at-top,wrong-import-position

xla_cpu.configure()  # As the entry points do: the suite runs the convolutions the CLI runs.

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='session', autouse=True)
def _hide_accelerators_from_tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  """A prepared TFDS data_dir holding tests/helpers/tiny_tfds.py's `simclr_tiny_shapes`."""
  import tiny_tfds  # pylint: disable=g-import-not-at-top
  return tiny_tfds.prepare(str(tmp_path_factory.mktemp('tfds')))


@pytest.fixture(scope='session')
def tfds_files_dir(tmp_path_factory):
  """The same data set written as 4 files per split (file-sharded, file-shuffled reading)."""
  import tiny_tfds  # pylint: disable=g-import-not-at-top
  return tiny_tfds.prepare(str(tmp_path_factory.mktemp('tfds_files')), num_shards=4)


@pytest.fixture(scope='session')
def tfds_shards_dir(tmp_path_factory):
  """tests/helpers/tiny_tfds.py's `simclr_tiny_shards`: 4 files per split, a few corrupt train records."""
  import tiny_tfds  # pylint: disable=g-import-not-at-top
  return tiny_tfds.prepare(str(tmp_path_factory.mktemp('tfds_shards')), num_shards=4,
                           name=tiny_tfds.SHARDS_NAME)
