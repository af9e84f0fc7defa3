"""The online linear probe (lineareval_while_pretraining): trained on stop_gradient features, so
its loss never reaches the encoder or projection head; unlabelled examples (TFDS label -1, as in
stl10 'unlabelled') are skipped, not trained toward a class."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import test as test_config
from simclr_jax import losses
from simclr_jax import models
from simclr_jax import steps

SIZE, BATCH, CLASSES = 8, 6, 10


class _Toy(nn.Module):
  """A stand-in for the SimCLR model with its output contract (features, projection, sup_logits
  from stop_gradient features, batch_stats): loss_and_grads compiles in a second."""

  @nn.compact
  def __call__(self, images, train: bool = False):
    h = nn.BatchNorm(use_running_average=not train)(images.reshape((images.shape[0], -1)))
    h = nn.Dense(16)(h)
    sup = nn.Dense(CLASSES, name='head_supervised')(jax.lax.stop_gradient(h))
    return {'features': h, 'projection': nn.Dense(4)(h), 'sup_logits': sup}


@pytest.fixture(scope='module')
def views():
  rng = np.random.default_rng(0)
  return [rng.integers(0, 256, (BATCH, 2, SIZE, SIZE, 3), dtype=np.uint8) for _ in range(2)]


def test_probe_gradient_never_reaches_encoder_or_projection_head(views):
  config = test_config.get_config()
  config.data.image_size = SIZE
  model = models.build_model(config, CLASSES)
  images = steps.to_float_images(views[0].reshape((2 * BATCH, SIZE, SIZE, 3)))
  labels = jnp.arange(2 * BATCH) % CLASSES

  @jax.jit
  def probe_grads(rng):
    variables = model.init(rng, images, train=False)

    def probe_loss(params):
      out, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, images,
                           train=True, mutable=['batch_stats'])
      return losses.supervised_loss(out['sup_logits'], labels)
    return jax.grad(probe_loss)(variables['params'])

  g = probe_grads(jax.random.key(0, impl='rbg'))
  assert set(g) == {'encoder', 'proj_head', 'head_supervised'}
  assert float(optax.global_norm(g['head_supervised'])) > 0
  for name in ('encoder', 'proj_head'):  # Exactly zero: stop_gradient, not merely small.
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(g[name])), name


def test_unlabelled_examples_are_skipped(views):
  config = test_config.get_config()
  model = _Toy()
  images = steps.to_float_images(views[0].reshape((2 * BATCH, SIZE, SIZE, 3)))
  variables = model.init(jax.random.key(0), images)
  state = steps.TrainState.create(apply_fn=model.apply, params=variables['params'],
                                  batch_stats=variables['batch_stats'], tx=optax.sgd(0.1))
  grads_fn = jax.jit(functools.partial(steps.loss_and_grads, config=config))
  mixed = np.array([3, -1, 7, -1, -1, 0], np.int32)
  _, m, _ = grads_fn(state.params, state, {'views': views[0], 'label': mixed})
  # Independently: the probe's cross-entropy over the labelled examples' views only.
  out, _ = model.apply(variables, images, train=True, mutable=['batch_stats'])
  rows = np.repeat(mixed, 2) >= 0
  logits = np.asarray(out['sup_logits'])[rows]
  want = optax.softmax_cross_entropy_with_integer_labels(logits, np.repeat(mixed, 2)[rows])
  assert float(m['supervised_loss']) == pytest.approx(float(jnp.mean(want)), rel=1e-5)
  hits = np.argmax(logits, -1) == np.repeat(mixed, 2)[rows]
  assert float(m['supervised_acc']) == pytest.approx(hits.mean())

  # All unlabelled: no probe loss, and the probe's gradient no longer depends on the data (only
  # its L2 term is left); trained toward a class, it would follow the images.
  none = np.full((BATCH,), -1, np.int32)
  g = [grads_fn(state.params, state, {'views': v, 'label': none}) for v in views]
  assert float(g[0][1]['supervised_loss']) == 0.0 and float(g[0][1]['supervised_acc']) == 0.0
  for a, b in zip(jax.tree.leaves(g[0][0]['head_supervised']),
                  jax.tree.leaves(g[1][0]['head_supervised'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.isfinite(float(g[0][1]['total_loss']))
