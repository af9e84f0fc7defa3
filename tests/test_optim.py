"""LARS, its masks, the learning-rate schedule and the supervised-head L2, each against an
independent reference: a NumPy re-derivation of the official update (tf2/lars_optimizer.py, spec
section 5), hand-labelled parameter classes, hand formulas and the published ImageNet step counts.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default as default_config
from configs import test as test_config
from simclr_jax import models
from simclr_jax import optim


def _config(**overrides):
  config = default_config.get_config()
  for key, value in overrides.items():
    section, name = key.split('__')
    setattr(getattr(config, section), name, value)
  return config


# ----------------------------------------------------------------------------- LARS update

def np_lars_step(params, grads, velocity, lr, excluded, wd, eeta=0.001, momentum=0.9):
  """Official LARS (classic momentum, no Nesterov) for one step, float64, per leaf name."""
  new_p, new_v = {}, {}
  for name, w in params.items():
    g = grads[name].astype(np.float64)
    w = w.astype(np.float64)
    trust = 1.0
    if not excluded[name]:
      g = g + wd * w
      w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
      trust = eeta * w_norm / g_norm if (w_norm > 0 and g_norm > 0) else 1.0
    v = momentum * velocity[name] + lr * trust * g
    new_v[name] = v
    new_p[name] = w - v
  return new_p, new_v


def _lr_by_hand(step, peak, warmup, total):
  if step < warmup:
    return peak * step / warmup
  return peak * 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / (total - warmup)))


# Flat names -> (shape, excluded?) written out by hand from the official exclude list
# ['batch_normalization', 'bias', 'head_supervised'].
LEAVES = {
    'encoder/stem_conv/kernel': ((3, 3, 3, 8), False),
    'encoder/block/conv1/kernel': ((3, 3, 8, 8), False),
    'encoder/block/bn1/bn/scale': ((8,), True),
    'encoder/block/bn1/bn/bias': ((8,), True),
    'encoder/block/zero_conv/kernel': ((1, 1, 8, 8), False),  # all zeros: trust ratio 1.
    'proj_head/nl_0/dense/kernel': ((8, 8), False),
    'proj_head/nl_0/bn_relu/bn/scale': ((8,), True),
    'proj_head/nl_0/bn_relu/bn/bias': ((8,), True),
    'proj_head/nl_1/dense/kernel': ((8, 4), False),
    'head_supervised/dense/kernel': ((8, 10), True),
    'head_supervised/dense/bias': ((10,), True),
}


def _nest(flat):
  tree = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _flat(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}/'))
    else:
      out[f'{prefix}{k}'] = v
  return out


@pytest.mark.parametrize('eeta,wd', [(0.001, 1e-4), (0.5, 1e-2)])
def test_lars_matches_numpy_official_update(eeta, wd):
  num_examples, batch = 1024, 256  # 4 steps per epoch.
  config = _config(optim__optimizer='lars', optim__learning_rate=0.6,
                   optim__learning_rate_scaling='linear', optim__warmup_epochs=1.0,
                   optim__weight_decay=wd, optim__trust_coefficient=eeta,
                   optim__momentum=0.9, train__batch_size=batch, train__epochs=3, train__steps=0)
  peak, warmup, total = 0.6 * batch / 256, 4, 3 * 4 + 1
  tx = optim.create_optimizer(config, num_examples)
  rng = np.random.default_rng(0)
  params = {}
  for name, (shape, _) in LEAVES.items():
    params[name] = (np.zeros(shape) if 'zero_conv' in name else rng.normal(size=shape)).astype(
        np.float32)
  excluded = {name: ex for name, (_, ex) in LEAVES.items()}
  np_v = {k: np.zeros(v.shape) for k, v in params.items()}
  jx_p = jax.tree.map(jnp.asarray, _nest(params))
  opt_state = tx.init(jx_p)
  update = jax.jit(tx.update)
  num_steps = 7  # Crosses the end of warmup (step 4) into the cosine part.
  for step in range(num_steps):
    grads = {k: (rng.normal(size=v.shape) * 0.1).astype(np.float32) for k, v in params.items()}
    lr = _lr_by_hand(step, peak, warmup, total)
    # The reference steps from the SAME float32 weights as the optimiser (so float32 rounding of
    # the weights does not accumulate into the comparison) and keeps its own float64 velocity.
    current = {k: v.astype(np.float64) for k, v in _flat(jax.tree.map(np.asarray, jx_p)).items()}
    np_p, np_v = np_lars_step(current, grads, np_v, lr, excluded, wd, eeta)
    updates, opt_state = update(jax.tree.map(jnp.asarray, _nest(grads)), opt_state, jx_p)
    jx_p = jax.tree.map(lambda p, u: p + u, jx_p, updates)
    got = _flat(jax.tree.map(np.asarray, updates))
    for name in params:  # optax update = -(new velocity) = new_w - w.
      want = -np_v[name]
      scale = np.abs(want).max() + 1e-30
      np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6 * scale,
                                 err_msg=f'{name} at step {step}')
  got = _flat(jax.tree.map(np.asarray, jx_p))
  for name in params:
    np.testing.assert_allclose(got[name], np_p[name], rtol=1e-6, atol=1e-6, err_msg=name)
  # The zero leaf got a trust ratio of 1 (plain lr * g) while it was zero: it moved far more
  # than a LARS-adapted leaf would (eeta * |w| / |g| << 1 for the others at eeta = 0.001).
  assert np.abs(got['encoder/block/zero_conv/kernel']).max() > 0


def test_lars_first_step_learning_rate_is_zero():
  """Official: the first update uses step 0, so lr = 0 during warmup and nothing moves."""
  config = _config(optim__warmup_epochs=1.0, train__batch_size=256, train__steps=0)
  tx = optim.create_optimizer(config, 1024)
  p = {'conv': {'kernel': jnp.ones((3, 3, 2, 2))}, 'bn': {'scale': jnp.ones((2,))}}
  g = jax.tree.map(jnp.ones_like, p)
  updates, _ = tx.update(g, tx.init(p), p)
  assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))


# ----------------------------------------------------------------------------- masks

def _path_str(path):
  return '/'.join(str(getattr(k, 'key', k)) for k in path)


def _abstract_params(config, num_classes=10):
  model = models.build_model(config, num_classes=num_classes)
  size = config.data.image_size
  variables = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, size, size, 3)), train=False))
  return variables['params']


def _check_mask(params, expect_included, expect_excluded):
  mask = optim.adaptation_mask(params)
  leaves = jax.tree_util.tree_leaves_with_path(params)
  flags = dict((_path_str(p), bool(m)) for (p, _), m in
               zip(leaves, jax.tree.leaves(mask)))
  excluded = sorted(k for k, v in flags.items() if not v)
  included = sorted(k for k, v in flags.items() if v)
  print(f'\n{len(excluded)} leaves excluded from weight decay and trust ratio:')
  for k in excluded:
    print('  EXCLUDED', k)
  print(f'{len(included)} leaves included.')
  for (path, leaf) in leaves:
    name = _path_str(path)
    parts = name.split('/')
    if parts[-1] in ('scale', 'bias'):  # BN scale/bias and every bias.
      assert not flags[name], name
    if 'head_supervised' in parts:
      assert not flags[name], name
    if parts[-1] == 'kernel' and len(leaf.shape) == 4:  # every conv (incl. SK 1x1s).
      assert flags[name], name
    if parts[-1] == 'kernel' and 'proj_head' in name:
      assert flags[name], name
  assert len(included) == expect_included
  assert len(excluded) == expect_excluded


def test_mask_on_resnet10_test_model():
  """configs/test.py: ResNet-10 (one basic block per group), CIFAR stem, 2-layer head, probe.
  Counted by hand: convs = stem 1 + 4 blocks x (conv1, conv2, shortcut conv) = 13; BN layers =
  13 (one per conv) -> 26 leaves; head: 2 dense kernels, BN leaves nl_0 scale+bias, nl_1 scale
  (no centre) = 3; supervised head kernel + bias = 2. Included 13 + 2, excluded 26 + 3 + 2."""
  config = test_config.get_config()
  _check_mask(_abstract_params(config), expect_included=15, expect_excluded=31)


def test_mask_on_resnet50_sk_three_layer_head():
  """R50 + SK (ResNet-D), 3-layer head, abstract shapes only. Counted by hand from the block
  layout: deep stem 3 convs + 3 BNs; each of the 3+4+6+3 = 16 bottlenecks has conv1, SK conv,
  SK fc_reduce, SK fc_attention, conv3 (5 kernels) and bn1, SK bn_conv, SK bn_reduce, bn3 (4 BNs);
  4 projection shortcuts add 1 conv + 1 BN each. Kernels 3 + 80 + 4 = 87, BN 3 + 64 + 4 = 71
  (142 leaves). Head: 3 kernels; BN leaves 2 + 2 + 1 = 5. Probe: 2."""
  config = test_config.get_config()
  config.model.resnet_depth = 50
  config.model.sk_ratio = 0.0625
  config.model.num_proj_layers = 3
  config.data.image_size = 64
  _check_mask(_abstract_params(config), expect_included=87 + 3,
              expect_excluded=142 + 5 + 2)


# ----------------------------------------------------------------------------- schedule

def test_schedule_points_by_hand():
  num_examples, batch = 50_000, 512
  config = _config(optim__learning_rate=1.0, optim__learning_rate_scaling='linear',
                   optim__warmup_epochs=10.0, train__batch_size=batch, train__epochs=100,
                   train__steps=0)
  total = 50_000 * 100 // 512 + 1  # 9766
  warmup = int(round(10.0 * 50_000 // 512))  # 500000.0 // 512 = 976.0 -> 976
  assert (total, warmup) == (9766, 976)
  assert optim.total_steps(config, num_examples) == total
  assert optim.warmup_steps(config, num_examples) == warmup
  peak = 1.0 * 512 / 256
  lr = optim.create_learning_rate_fn(config, num_examples)
  assert float(lr(0)) == 0.0
  assert float(lr(1)) == pytest.approx(peak / warmup, rel=1e-6)
  assert float(lr(warmup - 1)) == pytest.approx(peak * (warmup - 1) / warmup, rel=1e-6)
  assert float(lr(warmup)) == pytest.approx(peak, rel=1e-6)
  mid = warmup + (total - warmup) // 2  # (total - warmup) = 8790 is even: exactly half way.
  assert float(lr(mid)) == pytest.approx(peak * 0.5, rel=1e-5)
  last = total - 1
  want_last = peak * 0.5 * (1 + math.cos(math.pi * (last - warmup) / (total - warmup)))
  assert want_last < 1e-7  # one step before the end the cosine has all but reached 0 ...
  assert float(lr(last)) == pytest.approx(want_last, abs=1e-6 * peak)  # (float32 cos near pi)
  assert float(lr(total)) == pytest.approx(0.0, abs=1e-9)
  assert float(lr(total + 50)) == pytest.approx(0.0, abs=1e-9)  # clamped, never rises again.
  for step in (3, 500, 975, 1000, 4000, 9000):
    assert float(lr(step)) == pytest.approx(_lr_by_hand(step, peak, warmup, total), rel=1e-5,
                                            abs=1e-7)


def test_schedule_train_steps_override():
  config = _config(train__steps=123, train__batch_size=256, optim__warmup_epochs=1.0)
  assert optim.total_steps(config, 10_000) == 123
  assert optim.warmup_steps(config, 10_000) == 39  # 10000.0 // 256 = 39


def test_imagenet_step_counts_and_peak():
  """Paper default: ImageNet (1,281,167 images), B = 4096, 100 epochs, 10 warmup epochs."""
  n = 1_281_167
  linear = _config(optim__learning_rate=0.3, optim__learning_rate_scaling='linear',
                   optim__warmup_epochs=10.0, train__batch_size=4096, train__epochs=100,
                   train__steps=0)
  assert optim.total_steps(linear, n) == 31279
  assert optim.warmup_steps(linear, n) == 3127
  sqrt = _config(optim__learning_rate=0.075, optim__learning_rate_scaling='sqrt',
                 optim__warmup_epochs=10.0, train__batch_size=4096, train__epochs=100,
                 train__steps=0)
  assert optim.scaled_learning_rate(0.3, 4096, 'linear') == pytest.approx(4.8)
  assert optim.scaled_learning_rate(0.075, 4096, 'sqrt') == pytest.approx(4.8)
  lr_lin = optim.create_learning_rate_fn(linear, n)
  lr_sqrt = optim.create_learning_rate_fn(sqrt, n)
  for step in (0, 100, 3127, 10_000, 31_278):
    assert float(lr_lin(step)) == pytest.approx(float(lr_sqrt(step)), rel=1e-6)
  assert float(lr_lin(3127)) == pytest.approx(4.8, rel=1e-6)
  # 1000-epoch headline run.
  linear.train.epochs = 1000
  assert optim.total_steps(linear, n) == 1_281_167_000 // 4096 + 1 == 312_785


def test_sqrt_scaling_has_no_extra_factor():
  assert optim.scaled_learning_rate(0.1, 1024, 'sqrt') == pytest.approx(3.2)
  assert optim.scaled_learning_rate(1.0, 512, 'linear') == pytest.approx(2.0)
  with pytest.raises(ValueError):
    optim.scaled_learning_rate(1.0, 512, 'cubic')


# ----------------------------------------------------------------------------- supervised L2

def test_supervised_head_l2_matches_numpy():
  rng = np.random.default_rng(1)
  k = rng.normal(size=(16, 10)).astype(np.float32)
  b = rng.normal(size=(10,)).astype(np.float32)
  other = rng.normal(size=(16, 16)).astype(np.float32)
  params = {'encoder': {'conv': {'kernel': jnp.asarray(other)}},
            'proj_head': {'nl_0': {'dense': {'kernel': jnp.asarray(other)}}},
            'head_supervised': {'dense': {'kernel': jnp.asarray(k), 'bias': jnp.asarray(b)}}}
  wd = 1e-4
  want = wd * np.sum(k.astype(np.float64) ** 2) / 2  # tf.nn.l2_loss: sum(w^2)/2; no bias.
  assert float(optim.supervised_head_l2(params, wd)) == pytest.approx(want, rel=1e-6)


# --------------------------------------------- 'momentum' / 'adam': official L2-in-the-loss


def test_weight_decay_loss_for_momentum_covers_every_non_bn_weight():
  """Official add_weight_decay for non-LARS optimisers: wd * sum(v^2)/2 over every trainable
  variable whose name lacks 'batch_normalization' (biases and the supervised head included)."""
  config = test_config.get_config()
  model = models.build_model(config, num_classes=10)
  params = model.init(jax.random.key(0, impl='rbg'), jnp.zeros((2, 16, 16, 3)),
                      train=False)['params']
  want, n_bn, n_other = 0.0, 0, 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = _path_str(path)
    # Independent classification: BN leaves are exactly the 'scale'/'bias' of a BatchNorm module.
    if name.endswith(('bn/scale', 'bn/bias')):
      n_bn += 1
      continue
    n_other += 1
    want += np.sum(np.asarray(leaf, np.float64) ** 2) / 2
  assert n_bn > 0 and n_other > 0
  wd = 1e-3
  got = float(optim.weight_decay_loss(params, 'momentum', wd))
  assert got == pytest.approx(wd * want, rel=1e-5)
  assert float(optim.weight_decay_loss(params, 'adam', wd)) == pytest.approx(got)
  # LARS keeps decay in the optimiser: only the supervised-head kernel is in the loss.
  assert float(optim.weight_decay_loss(params, 'lars', wd)) == pytest.approx(
      float(optim.supervised_head_l2(params, wd)))


def test_momentum_is_plain_nesterov_sgd():
  """v <- m v + g; update = -lr (g + m v) (Nesterov), with no decay inside the optimiser."""
  config = _config(optim__optimizer='momentum', optim__learning_rate=0.1, optim__warmup_epochs=0.0,
                   optim__weight_decay=0.5, train__batch_size=256, train__epochs=10, train__steps=0)
  tx = optim.create_optimizer(config, num_examples=2560)
  lr_fn = optim.create_learning_rate_fn(config, num_examples=2560)
  w = {'kernel': jnp.asarray([1.0, -2.0]), 'bias': jnp.asarray([0.5])}
  state = tx.init(w)
  v = {k: np.zeros_like(np.asarray(x)) for k, x in w.items()}
  rng = np.random.default_rng(0)
  for step in range(3):
    g = {k: rng.normal(size=np.shape(x)).astype(np.float32) for k, x in w.items()}
    updates, state = tx.update({k: jnp.asarray(x) for k, x in g.items()}, state, w)
    lr = float(lr_fn(step))
    for k in w:
      v[k] = 0.9 * v[k] + g[k]
      np.testing.assert_allclose(np.asarray(updates[k]), -lr * (g[k] + 0.9 * v[k]), rtol=1e-5)
