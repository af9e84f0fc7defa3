"""Bad input stops before any compilation with one message naming the key/path, value and fix."""

import os
import subprocess
import sys

import pytest

from configs import default
from configs import test as test_config
from simclr_jax import train
from simclr_jax import validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=120):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'simclr_jax.main', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_unknown_config_key_fails_loudly(tmp_path):
  r = _main('--config=configs/test.py', '--config.train.batch_sise=64', f'--workdir={tmp_path}')
  assert r.returncode != 0
  assert 'batch_sise' in r.stderr
  assert not os.listdir(tmp_path)  # Nothing written.


def test_missing_config_file(tmp_path):
  r = _main('--config=configs/nope.py', f'--workdir={tmp_path}')
  assert r.returncode != 0
  assert 'configs/nope.py' in r.stderr


def test_batch_not_divisible_by_devices_exits_2_before_compiling(tmp_path):
  r = _main('--config=configs/test.py', '--config.train.batch_size=20', f'--workdir={tmp_path}')
  assert r.returncode == 2, r.stderr[-2000:]
  assert 'config.train.batch_size=20' in r.stderr
  assert '8 devices' in r.stderr
  assert 'checkpoints' not in os.listdir(tmp_path)


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  with pytest.raises(PermissionError, match='workdir'):
    train.train_and_evaluate(test_config.get_config(), str(blocker / 'sub'))


@pytest.mark.parametrize('key,value,fragment', [
    ('model.resnet_depth', 42, '[10, 18, 34, 50, 101, 152, 200]'),
    ('model.proj_head_mode', 'mlp', "('none', 'linear', 'nonlinear')"),
    ('optim.optimizer', 'sgd', "('lars', 'momentum', 'adam')"),
    ('optim.learning_rate_scaling', 'log', "('linear', 'sqrt')"),
    ('loss.temperature', 0.0, 'positive'),
    ('model.dtype', 'float16', 'bfloat16'),
    ('model.ft_proj_selector', 5, 'index'),
    ('eval.batch_size', 12, 'multiple'),
])
def test_validation_names_key_value_and_allowed(key, value, fragment):
  config = default.get_config()
  group, field = key.split('.')
  config[group][field] = value
  with pytest.raises(validation.ConfigError) as e:
    validation.validate(config, num_devices=8)
  msg = str(e.value)
  assert f'config.{key}={value!r}' in msg
  assert fragment in msg


def test_default_and_test_configs_validate():
  for cfg in (default.get_config(), test_config.get_config()):
    validation.validate(cfg, num_devices=8)


def test_config_is_locked():
  config = default.get_config()
  with pytest.raises(AttributeError):
    config.train.batch_sise = 3  # pylint: disable=attribute-error
