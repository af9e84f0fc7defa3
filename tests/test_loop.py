"""The shared training loop and its stop decisions: step-cadence NaN checks (the same step on
every host), no checkpoint of a non-finite state, the last good checkpoint named and kept."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from simclr_jax import loop
from simclr_jax import progress
from simclr_jax import sharding


class _Writer:
  def write_scalars(self, step, scalars):
    pass


def _metrics(loss):
  return {'loss': np.float32(loss), 'learning_rate': np.float32(0.1)}


def test_nan_decision_is_on_the_step_cadence_not_the_timer():
  """Two hosts whose report timers fire differently stop at the same step: the check step."""
  stops = []
  for every_seconds in (0.0, 1e9):  # Host A reports every step, host B only first/last.
    r = progress.Reporter(_Writer(), total=10, start=0, batch_size=8,
                          every_seconds=every_seconds, loss_key='loss', describe=str,
                          check_every=4)
    with pytest.raises(progress.NonFiniteLossError) as e:
      for step, loss in enumerate([1.0, np.nan, 1.0, 1.0, 1.0, 1.0]):
        r.step_done(step, _metrics(loss))
    stops.append((step + 1, e.value.step))
  assert stops == [(4, 2), (4, 2)]  # Both stop after step 4, naming step 2 as the first NaN.


def test_non_finite_loss_keeps_the_last_good_checkpoint_and_names_it(tmp_path, capsys):
  """A NaN at step 5 with checkpoints every 3: step 3 is saved; the check before the step-6
  save stops the run; step 3 survives and the error names it."""
  config = test_config.get_config()
  config.train.checkpoint_every_steps = 3
  config.train.check_finite_every_steps = 100  # Only the pre-save check can catch it.
  config.train.log_every_seconds = 1e9
  mesh = sharding.make_mesh()
  state = jax.device_put({'w': jnp.ones((4,)), 'step': jnp.zeros((), jnp.int32)},
                         sharding.replicated(mesh))

  def step_fn(state, batch):
    step = state['step'] + 1
    loss = jnp.where(step == 5, jnp.nan, jnp.sum(batch['x']))
    return {'w': state['w'] * 1.5, 'step': step}, {'loss': loss, 'learning_rate': 0.0}

  def batches(start):
    while True:
      yield {'x': np.ones((8,), np.float32)}

  mngr, state, start = loop.restore(config, str(tmp_path), state)
  assert start == 0
  with pytest.raises(progress.NonFiniteLossError) as e:
    loop.run(config, str(tmp_path), mngr=mngr, state=state, start=start, total=9,
             step_fn=step_fn, batches=batches, mesh=mesh, writer=_Writer(), loss_key='loss',
             describe=str)
  msg = str(e.value)
  assert 'non-finite at step 5' in msg and 'last good checkpoint is step 3' in msg, msg
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3']
