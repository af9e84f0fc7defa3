"""Checkpoints round-trip the whole train state, keep its sharding, and carry the config."""


import jax
import numpy as np
import pytest

from configs import test as test_config
from simclr_jax.checkpoints import checkpointing
from simclr_jax import models
from simclr_jax import optim
from simclr_jax import sharding
from simclr_jax import train


def _state(config):
  mesh = sharding.make_mesh()
  model = models.build_model(config, 10)
  return train.make_init_fn(config, model, optim.create_optimizer(config, 4000), mesh)()


def test_save_restore_round_trip_keeps_values_and_sharding(tmp_path):
  config = test_config.get_config()
  state = _state(config)
  # Make the state non-trivial: bump every leaf so a restore of the init would not match.
  state = jax.tree.map(lambda x: x + 1 if np.issubdtype(x.dtype, np.floating) else x, state)
  state = state.replace(step=state.step + 7)
  mngr = checkpointing.manager(str(tmp_path), keep=2)
  checkpointing.save(mngr, 7, state)
  mngr.wait_until_finished()
  fresh = _state(config)
  restored = checkpointing.restore(checkpointing.manager(str(tmp_path)), fresh)
  assert int(restored.step) == 7
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert b.sharding.is_equivalent_to(a.sharding, a.ndim)


def test_keep_limits_the_number_of_checkpoints(tmp_path):
  config = test_config.get_config()
  state = _state(config)
  mngr = checkpointing.manager(str(tmp_path), keep=2)
  for step in (1, 2, 3):
    checkpointing.save(mngr, step, state)
  mngr.wait_until_finished()
  assert sorted(mngr.all_steps()) == [2, 3]


def test_config_json_round_trip(tmp_path):
  config = test_config.get_config()
  checkpointing.write_config(str(tmp_path), config)
  back = checkpointing.read_config(str(tmp_path))
  assert back.to_dict() == config.to_dict()


def test_read_config_of_a_non_workdir_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match='simclr_jax workdir'):
    checkpointing.read_config(str(tmp_path))


def test_keys_added_since_an_old_run_are_no_change_at_their_reproducing_value():
  old = {'aug': {'crop': True}, 'model': {'dtype': 'float32'}, 'train': {'steps': 6}}
  new = {'aug': {'crop': True, 'on_device': False},
         'model': {'dtype': 'float32', 'conv_impl': 'xla'},
         'train': {'steps': 6, 'profile_steps': 0}}
  assert checkpointing.config_changes(old, new) == ([], [])
  new['aug']['on_device'] = True  # Another stream than the old run's: it matters.
  matters, _ = checkpointing.config_changes(old, new)
  assert matters == [('aug.on_device', '<absent>', True)]
