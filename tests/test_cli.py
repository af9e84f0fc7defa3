"""Config validation in-process: each rule names the key, the value and what is allowed.
The CLI's one-line errors for every kind of bad input are in test_errors.py."""

import pytest

from configs import default
from configs import test as test_config
from simclr_jax import train
from simclr_jax import validation

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
