"""Global BatchNorm and the global loss: one training step over a batch sharded on 8 devices is the
same step as on 1 device (loss, metrics, every gradient, updated params, momentum, BN statistics).

The reference is the single-device computation of the same step: there, BN statistics cover both
views of the whole batch and every anchor sees every other view, by construction. Under the
8-device mesh each device holds 1/8 of the batch, so equality proves that BN statistics are
reduced across devices (SyncBN) and that the loss's negatives and its gradients cross devices.
A power check shows that per-device statistics really would differ for this batch.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import test as test_config
from simclr_jax import models
from simclr_jax import optim
from simclr_jax import sharding
from simclr_jax import steps

NUM_EXAMPLES = 320
NUM_CLASSES = 10


class _CaptureState(NamedTuple):
  inner: Any
  grads: Any


def _capturing(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """The real optimiser, plus a copy of the raw gradients it was given, kept in its state."""
  def init(params):
    return _CaptureState(inner.init(params), jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params=None):
    updates, new_inner = inner.update(grads, state.inner, params)
    return updates, _CaptureState(new_inner, grads)

  return optax.GradientTransformation(init, update)


def _config():
  config = test_config.get_config()  # ResNet-10 x0.125, 16 px, batch 32, LARS, 2-layer head.
  config.optim.warmup_epochs = 0.0  # So that the first step's learning rate is not 0.
  config.optim.weight_decay = 1e-4
  return config


def _init_state(config, model, tx, mesh):
  """As the training loop does it: steps.create_train_state jitted with replicated outputs (an
  'rbg' key: threefry initialisers compile several times slower on CPU)."""
  shape = (config.data.image_size, config.data.image_size, 3)
  init = functools.partial(steps.create_train_state, model=model, tx=tx, image_shape=shape)
  rng = jax.random.key(config.seed, impl='rbg')
  shardings = jax.tree.map(lambda _: sharding.replicated(mesh), jax.eval_shape(init, rng))
  return jax.jit(init, out_shardings=shardings)(rng)


@functools.lru_cache(maxsize=None)
def _setup():
  config = _config()
  model = models.build_model(config, num_classes=NUM_CLASSES)
  tx = _capturing(optim.create_optimizer(config, NUM_EXAMPLES))
  lr_fn = optim.create_learning_rate_fn(config, NUM_EXAMPLES)
  mesh1 = sharding.make_mesh(jax.devices()[:1])
  mesh8 = sharding.make_mesh()
  state1 = _init_state(config, model, tx, mesh1)
  # Same initial values on the 8-device mesh (replicated), without a second init compile.
  state8 = jax.device_put(jax.device_get(state1), sharding.replicated(mesh8))
  rng = np.random.default_rng(0)
  size, b = config.data.image_size, config.train.batch_size
  batches = [{'views': rng.integers(0, 256, size=(b, 2, size, size, 3), dtype=np.uint8),
              'label': rng.integers(0, NUM_CLASSES, size=(b,)).astype(np.int32)}
             for _ in range(2)]
  results = {}
  for name, mesh, state in (('1', mesh1, state1), ('8', mesh8, state8)):
    step = jax.jit(functools.partial(steps.train_step, config=config, lr_fn=lr_fn, mesh=mesh))
    history = []
    for batch in batches:
      global_batch = sharding.global_batch(batch, mesh)
      assert len(global_batch['views'].sharding.device_set) == mesh.size
      state, metrics = step(state, global_batch)
      history.append(jax.device_get((state, metrics)))
    results[name] = history
  return config, model, batches, state1, results


def _assert_trees_close(a, b, what, rtol=1e-4):
  fa = jax.tree_util.tree_leaves_with_path(a)
  fb = jax.tree.leaves(b)
  assert len(fa) == len(fb) and len(fa) > 0
  for (path, x), y in zip(fa, fb):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = max(np.abs(x).max(), np.abs(y).max(), 1e-30)
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale,
                               err_msg=f'{what}: {jax.tree_util.keystr(path)}')


@pytest.mark.parametrize('step', [0, 1])
def test_step_on_8_devices_equals_1_device(step):
  _, _, _, _, results = _setup()
  s1, m1 = results['1'][step]
  s8, m8 = results['8'][step]
  assert set(m1) == set(m8)
  for k in m1:
    np.testing.assert_allclose(m8[k], m1[k], rtol=1e-4, atol=1e-6, err_msg=k)
  assert np.isfinite(m1['contrast_loss']) and m1['contrast_loss'] > 0
  assert m1['learning_rate'] > 0
  _assert_trees_close(s8.opt_state.grads, s1.opt_state.grads, 'gradients')
  _assert_trees_close(s8.batch_stats, s1.batch_stats, 'batch_stats')
  _assert_trees_close(s8.params, s1.params, 'params', rtol=1e-5)
  _assert_trees_close(s8.opt_state.inner, s1.opt_state.inner, 'optimizer state')
  # The step really moved things: BN statistics and params changed, gradients are non-trivial.
  _, _, _, state0, _ = _setup()
  moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in
           zip(jax.tree.leaves(s1.batch_stats), jax.tree.leaves(jax.device_get(state0.batch_stats)))]
  assert min(moved) > 0
  zero = sorted(jax.tree_util.keystr(p) for p, g in
                jax.tree_util.tree_leaves_with_path(s1.opt_state.grads) if np.abs(g).max() == 0)
  if step == 0:
    # Every last-BN gamma starts at 0, so nothing upstream in a residual branch gets gradient:
    # exactly conv1, bn1 (scale, bias) and conv2 of each of the 4 basic blocks.
    want = sorted(f"['encoder']['group{g}_block0']{leaf}" for g in range(1, 5) for leaf in
                  ("['conv1']['Conv_0']['kernel']", "['bn1']['bn']['scale']",
                   "['bn1']['bn']['bias']", "['conv2']['Conv_0']['kernel']"))
    assert zero == want
  else:
    assert zero == []


def test_per_device_statistics_would_differ():
  """Power check: BN statistics of one device's share (4 examples, 8 views) of the first batch
  differ clearly from the global-batch statistics, and so would an 8-device step with local BN."""
  config, model, batches, state0, results = _setup()
  views = batches[0]['views']
  b = views.shape[0]
  images = steps.to_float_images(jnp.asarray(views.reshape((2 * b,) + views.shape[2:])))
  variables = {'params': state0.params, 'batch_stats': state0.batch_stats}
  apply = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))
  _, whole = apply(variables, images)
  _, local = apply(variables, images[:2 * b // 8])
  # The single-device step's statistics are those of the whole batch...
  _assert_trees_close(results['1'][0][0].batch_stats, whole['batch_stats'], 'whole-batch stats')
  # ... and differ from one device's share.
  diffs = [np.abs(np.asarray(x) - np.asarray(y)).max() / (np.abs(np.asarray(x)).max() + 1e-12)
           for x, y in zip(jax.tree.leaves(whole['batch_stats']),
                           jax.tree.leaves(local['batch_stats']))]
  assert np.median(diffs) > 1e-2, diffs
