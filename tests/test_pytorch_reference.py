"""bench/pytorch_reference.py computes what simclr_jax computes: same network (parameter counts,
and the same outputs given the same weights), same NT-Xent, same LARS update."""

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip('torch')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax import losses, models, optim  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench'))
import pytorch_reference as ref  # pylint: disable=g-import-not-at-top,wrong-import-position


def _config(depth, width, image_size, proj_layers=3, **optim_fields):
  c = default.get_config()
  with c.unlocked():
    c.model.resnet_depth = depth
    c.model.width_multiplier = width
    c.model.num_proj_layers = proj_layers
    c.data.image_size = image_size
    for k, v in optim_fields.items():
      c.optim[k] = v
  return c


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('depth,image_size,encoder_params', [
    (18, 32, None),  # CIFAR stem.
    (50, 224, 23_508_032),  # The exact R50 1x encoder count (SIMCLR_FACTS.md).
])
def test_parameter_counts_match_ours(depth, image_size, encoder_params):
  model = models.build_model(_config(depth, 1.0, image_size), num_classes=10)
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((2, image_size, image_size, 3)), train=False))
  p = variables['params']
  with torch.device('meta'):  # Shapes only: no 23M-parameter initialisation.
    net = ref.build(depth, 1.0, image_size, proj_layers=3, probe_classes=10)
  count = lambda m: sum(x.numel() for x in m.parameters())
  assert count(net.encoder) == _count(p['encoder'])
  assert count(net.proj_head) == _count(p['proj_head'])
  assert count(net.head_supervised) == _count(p['head_supervised'])
  assert count(net) == _count(p)
  if encoder_params is not None:
    assert count(net.encoder) == encoder_params
  # BN running statistics: one mean and one variance per BN channel, as our batch_stats.
  stats = sum(b.numel() for n, b in net.named_buffers() if n.endswith(('running_mean', 'running_var')))
  assert stats == _count(variables['batch_stats'])


@pytest.mark.parametrize('depth,width,image_size', [(18, 0.25, 8), (50, 0.125, 36)])
def test_same_outputs_as_ours_given_same_weights(depth, width, image_size):
  """Train-mode forward of both nets on one batch, both stems (36 px: 7x7/2 conv and TF-SAME max
  pool, padded after). Random weights, every BN gamma and beta too, so no residual branch hides
  behind a zero-initialised gamma. Tolerance: 4x the reference's own float32-vs-float64 error
  (BN over a few values amplifies rounding in the deeper net)."""
  model = models.build_model(_config(depth, width, image_size), num_classes=10)
  x = np.random.RandomState(0).rand(6, image_size, image_size, 3).astype(np.float32)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((2, image_size, image_size, 3)), train=False))
  rng = np.random.RandomState(1)

  def sample(path, v):
    kind = path[-1].key
    if kind == 'scale':
      return rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
    if kind in ('bias', 'mean'):
      return rng.normal(0, 0.1, v.shape).astype(np.float32)
    if kind == 'var':
      return rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
    return (rng.normal(size=v.shape) / np.sqrt(np.prod(v.shape[:-1]))).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(sample, shapes['params'])
  stats = jax.tree_util.tree_map_with_path(sample, shapes['batch_stats'])
  out, _ = jax.jit(lambda p, s, x: model.apply({'params': p, 'batch_stats': s}, x, train=True,
                                               mutable=['batch_stats']))(params, stats, x)
  net = ref.build(depth, width, image_size, proj_layers=3, probe_classes=10)
  ref.load_flax_variables(net, params, stats)
  net.train()
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
  with torch.no_grad():
    got = [t.numpy() for t in net(xt)]
    want64 = [t.numpy() for t in net.double()(xt.double())]
  for name, g, w64, key in zip(('z', 'h', 'logits'), got, want64,
                               ('projection', 'features', 'sup_logits')):
    ours = np.asarray(out[key])
    own_error = np.max(np.abs(g - w64))
    assert np.max(np.abs(g - ours)) <= max(4 * own_error, 1e-4), (name, own_error)
    np.testing.assert_allclose(g, ours, rtol=0.05, atol=5e-3, err_msg=name)


def test_nt_xent_value_and_gradient_match_ours():
  rng = np.random.RandomState(0)
  za, zb = rng.normal(size=(2, 12, 16)).astype(np.float32)
  want, (want_ga, want_gb) = jax.jit(jax.value_and_grad(
      lambda a, b: losses.nt_xent(a, b, 0.2)[0], (0, 1)))(za, zb)
  ta = torch.tensor(za, requires_grad=True)
  tb = torch.tensor(zb, requires_grad=True)
  got = ref.nt_xent(ta, tb, 0.2)
  got.backward()
  np.testing.assert_allclose(float(got.detach()), float(want), rtol=1e-5)
  np.testing.assert_allclose(ta.grad.numpy(), np.asarray(want_ga), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(tb.grad.numpy(), np.asarray(want_gb), rtol=1e-4, atol=1e-6)


def test_lars_updates_match_our_optimizer():
  """Two steps of our optimiser (optim.create_optimizer, LARS, no warmup so lr is the peak) and of
  the reference on a kernel, a BN scale and bias, a zero kernel, and the probe."""
  config = _config(18, 1.0, 32, optimizer='lars', learning_rate=0.6, warmup_epochs=0.0,
                   weight_decay=1e-2)
  with config.unlocked():
    config.train.steps = 100
    config.train.batch_size = 256
  tx = optim.create_optimizer(config, num_examples=10_000)
  rng = np.random.RandomState(0)
  shapes = {('encoder', 'conv', 'Conv_0', 'kernel'): (3, 3, 4, 5),
            ('encoder', 'bn', 'bn', 'scale'): (5,), ('encoder', 'bn', 'bn', 'bias'): (5,),
            ('proj_head', 'zero', 'dense', 'kernel'): (5, 3),
            ('head_supervised', 'dense', 'kernel'): (5, 2),
            ('head_supervised', 'dense', 'bias'): (2,)}
  flat = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  flat[('proj_head', 'zero', 'dense', 'kernel')][:] = 0.0
  grads = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
           for _ in range(2)]

  def nest(d):
    out = {}
    for k, v in d.items():
      node = out
      for part in k[:-1]:
        node = node.setdefault(part, {})
      node[k[-1]] = jnp.asarray(v)
    return out

  @jax.jit
  def two_steps(params, grads):
    opt_state = tx.init(params)
    for g in grads:
      updates, opt_state = tx.update(g, opt_state, params)
      params = jax.tree.map(lambda p, u: p + u, params, updates)
    return params

  params = two_steps(nest(flat), [nest(g) for g in grads])

  names = {k: '.'.join(k) for k in shapes}
  tparams = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in flat.items()}
  adapted = [tparams[k] for k in shapes if ref.is_adapted(names[k], tparams[k])]
  other = [tparams[k] for k in shapes if not ref.is_adapted(names[k], tparams[k])]
  assert len(adapted) == 2  # The conv and the zero dense kernel; not BN, biases or the probe.
  opt = ref.LARS([dict(params=adapted, adapt=True), dict(params=other, adapt=False)],
                 lr=0.6, momentum=0.9, weight_decay=1e-2, eta=0.001)
  lr_fn = optim.create_learning_rate_fn(config, num_examples=10_000)
  for step, g in enumerate(grads):
    for group in opt.param_groups:
      group['lr'] = float(lr_fn(step))  # Our cosine schedule (peak at step 0: no warmup).
    for k in shapes:
      tparams[k].grad = torch.tensor(g[k])
    opt.step()
  for k in shapes:
    want = np.asarray(params[k[0]][k[1]][k[2]][k[3]] if len(k) == 4 else params[k[0]][k[1]][k[2]])
    np.testing.assert_allclose(tparams[k].detach().numpy(), want, rtol=1e-5, atol=1e-6,
                               err_msg=names[k])


def test_time_step_runs_and_reports():
  r = ref.time_step(10, 0.125, 8, 4, steps=2, proj_layers=2, warmup_steps=0)
  assert r['images_per_s'] > 0 and r['views'] == 8 and len(r['step_s_all']) == 2
  assert r['step_s_min'] <= r['step_s'] <= r['step_s_max']
  assert np.isfinite(r['loss'])
