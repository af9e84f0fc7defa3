"""The encoder and heads against published numbers and independent references.

References: the SimCLR / SimCLRv2 papers' parameter counts (rounded to the nearest million) and
exact R50/R101 counts; TensorFlow's own conv2d / avg_pool2d for the official padding rules; NumPy
formulas for BatchNorm (epsilon 1e-5, decay 0.9, biased variance) and for the projection head;
the official init distributions. Large models are only traced (jax.eval_shape), never allocated.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from configs import test as test_config
from simclr_jax import models
from simclr_jax.models import heads
from simclr_jax.models import resnet

# Published block counts (He et al. 2016, Table 1), written out here independently.
PUBLISHED_BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3],
                    152: [3, 8, 36, 3]}


def _fast_key(seed):
  """Real initialisation with a cheap-to-compile PRNG (threefry + truncated normals make the jitted
  init of a ResNet take a minute to compile on 2 CPU cores). Init VALUES other than random draws
  (BN scale/bias, zero gammas) do not depend on the generator."""
  return jax.random.key(seed, impl='unsafe_rbg')


def _abstract_variables(encoder, size, batch=1, **kwargs):
  return jax.eval_shape(lambda: encoder.init(jax.random.PRNGKey(0),
                                             jnp.zeros((batch, size, size, 3)), train=False,
                                             **kwargs))


@functools.lru_cache(maxsize=None)
def _abstract_params(depth, width, sk, size=224):
  return _abstract_variables(models.build_encoder(depth, width, sk), size)['params']


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _paths(tree):
  return {'/'.join(str(getattr(k, 'key', k)) for k in p): leaf
          for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


# ----------------------------------------------------------------------------- parameter counts

@pytest.mark.parametrize('depth,width,sk,millions', [
    (50, 1, 0.0, 24), (50, 1, 0.0625, 35), (50, 2, 0.0, 94), (50, 2, 0.0625, 140),
    (50, 4, 0.0, 375), (101, 1, 0.0, 43), (152, 1, 0.0, 58), (152, 3, 0.0625, 795)])
def test_parameter_counts_match_papers(depth, width, sk, millions):
  """SimCLRv2 Table 1 / SimCLR Table 1 encoder sizes, rounded to the nearest million."""
  n = _count(_abstract_params(depth, width, sk))
  print(f'R{depth} {width}x sk={sk}: {n:,} parameters')
  assert round(n / 1e6) == millions, n


@pytest.mark.parametrize('depth,exact', [(50, 23_508_032), (101, 42_500_160)])
def test_exact_parameter_counts(depth, exact):
  assert _count(_abstract_params(depth, 1, 0.0)) == exact


# ----------------------------------------------------------------------------- shapes and stems

@pytest.mark.parametrize('depth,width', [(18, 1), (34, 2), (50, 1), (50, 2), (101, 1)])
def test_feature_dims(depth, width):
  enc = models.build_encoder(depth, width, cifar_stem=True)
  out = jax.eval_shape(lambda: enc.init_with_output(jax.random.PRNGKey(0),
                                                    jnp.zeros((2, 32, 32, 3)), train=False)[0])
  want = (2048 if depth >= 50 else 512) * width
  assert out.shape == (2, want) and out.dtype == jnp.float32


def _intermediate_shapes(encoder, size):
  v = _abstract_variables(encoder, size, capture_intermediates=True)
  return {k.rsplit('/__call__', 1)[0]: s.shape for k, s in _paths(v['intermediates']).items()
          if k.count('/') == 2}  # top-level modules only: name/__call__/0


def test_cifar_stem_has_no_max_pool():
  """32 px, CIFAR stem: 3x3 stride-1 conv, no max-pool, so group1 keeps 32x32 and the final map
  is 4x4 (strides 1, 2, 2, 2). The ImageNet stem at 224 gives 112 -> pool 56 -> ... -> 7x7."""
  s = _intermediate_shapes(models.build_encoder(18, 1, cifar_stem=True), 32)
  assert s['stem_conv'] == (1, 32, 32, 64)
  assert s['group1_block0'] == (1, 32, 32, 64)
  assert s['group2_block0'] == (1, 16, 16, 128)
  assert s['group3_block0'] == (1, 8, 8, 256)
  assert s['group4_block1'] == (1, 4, 4, 512)
  params = _paths(_abstract_variables(models.build_encoder(18, 1, cifar_stem=True), 32)['params'])
  stem = {k: v.shape for k, v in params.items() if k.startswith('stem')}
  assert stem == {'stem_conv/Conv_0/kernel': (3, 3, 3, 64), 'stem_bn/bn/scale': (64,),
                  'stem_bn/bn/bias': (64,)}

  s = _intermediate_shapes(models.build_encoder(50, 1), 224)
  assert s['stem_conv'] == (1, 112, 112, 64)
  assert s['group1_block0'] == (1, 56, 56, 256)
  assert s['group4_block2'] == (1, 7, 7, 2048)
  params = _paths(_abstract_params(50, 1, 0.0))
  assert params['stem_conv/Conv_0/kernel'].shape == (7, 7, 3, 64)


def test_resnet_d_deep_stem():
  """sk_ratio > 0: three 3x3 convs 32w, 32w, 64w (first strided), then max-pool: total stride 4."""
  enc = models.build_encoder(50, 1, sk_ratio=0.0625)
  params = _paths(_abstract_params(50, 1, 0.0625))
  assert params['stem_conv1/Conv_0/kernel'].shape == (3, 3, 3, 32)
  assert params['stem_conv2/Conv_0/kernel'].shape == (3, 3, 32, 32)
  assert params['stem_conv3/Conv_0/kernel'].shape == (3, 3, 32, 64)
  s = _intermediate_shapes(enc, 224)
  assert s['stem_conv1'] == (1, 112, 112, 32)
  assert s['group1_block0'] == (1, 56, 56, 256)
  # SK: one 3x3 conv to 2f, fc reduce to max(f * 0.0625, 32), attention back to 2f.
  assert params['group1_block0/sk_conv2/conv/Conv_0/kernel'].shape == (3, 3, 64, 128)
  assert params['group1_block0/sk_conv2/fc_reduce/Conv_0/kernel'].shape == (1, 1, 64, 32)
  assert params['group1_block0/sk_conv2/fc_attention/Conv_0/kernel'].shape == (1, 1, 32, 128)


@pytest.mark.parametrize('depth,sk', [(18, 0.0), (50, 0.0625), (152, 0.0625), (101, 0.0)])
def test_no_conv_bias_anywhere(depth, sk):
  """Every module with a kernel has no bias; every bias belongs to a BN (next to a scale)."""
  params = _paths(_abstract_params(depth, 1, sk))
  modules = {}
  for k in params:
    parent, leaf = k.rsplit('/', 1)
    modules.setdefault(parent, set()).add(leaf)
  n_convs = 0
  for parent, leaves in modules.items():
    assert leaves in ({'kernel'}, {'scale', 'bias'}), (parent, leaves)
    n_convs += leaves == {'kernel'}
  # Independent count of convs: stem (1 or 3) + per block (2 basic / 3 bottleneck, SK adds the
  # two 1x1 fc layers) + one projection shortcut per group.
  blocks = sum(PUBLISHED_BLOCKS[depth])
  per_block = 2 if depth < 50 else (5 if sk else 3)
  assert n_convs == (3 if sk else 1) + blocks * per_block + 4


# ----------------------------------------------------------------------------- zero-init gamma

@pytest.mark.parametrize('depth,sk', [(18, 0.0), (50, 0.0625)])
def test_last_bn_gamma_zero_in_every_block(depth, sk):
  enc = models.build_encoder(depth, 0.125, sk, cifar_stem=True)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 3))
  variables = jax.jit(functools.partial(enc.init, train=False))(_fast_key(0), x)
  params = variables['params']
  blocks = [f'group{g + 1}_block{b}' for g, n in enumerate(PUBLISHED_BLOCKS[depth])
            for b in range(n)]
  assert sorted(k for k in params if k.startswith('group')) == sorted(blocks)
  last_bn = 'bn3' if depth >= 50 else 'bn2'
  for name in blocks:
    scales = {k: np.asarray(v) for k, v in _paths(params[name]).items() if k.endswith('/scale')}
    zero = sorted(k for k, v in scales.items() if np.all(v == 0))
    assert zero == [f'{last_bn}/bn/scale'], (name, zero)
    assert all(np.all(v == 1) for k, v in scales.items() if k not in zero), name
  n_zero = sum(np.all(np.asarray(v) == 0) for k, v in _paths(params).items()
               if k.endswith('/scale'))
  assert n_zero == sum(PUBLISHED_BLOCKS[depth])
  if depth >= 50:
    return  # (the behavioural check below costs another compile; the basic net shows it.)
  # Behaviour: at init the residual branch is exactly 0, so every identity-shortcut block
  # passes its (post-ReLU, non-negative) input through unchanged.
  _, inter = jax.jit(functools.partial(enc.apply, train=False, capture_intermediates=True,
                                       mutable=['intermediates']))(variables, x)
  inter = inter['intermediates']
  for g, n in enumerate(PUBLISHED_BLOCKS[depth]):
    for b in range(1, n):
      prev = np.asarray(inter[f'group{g + 1}_block{b - 1}']['__call__'][0])
      cur = np.asarray(inter[f'group{g + 1}_block{b}']['__call__'][0])
      np.testing.assert_array_equal(cur, prev)


# ----------------------------------------------------------------------------- BatchNorm

@functools.lru_cache(maxsize=None)
def _tiny_encoder_fns():
  enc = models.build_encoder(10, 0.125, cifar_stem=True)
  init = jax.jit(functools.partial(enc.init, train=False))
  apply = jax.jit(functools.partial(enc.apply, train=True, capture_intermediates=True,
                                    mutable=['batch_stats', 'intermediates']))
  return init, apply


def _stem_bn_io(scale, seed, variables=None):
  init, apply = _tiny_encoder_fns()
  x = scale * jax.random.normal(jax.random.PRNGKey(seed), (2, 4, 4, 3))
  if variables is None:
    variables = init(_fast_key(0), x)
  _, new = apply(variables, x)
  inter = new['intermediates']
  conv_out = np.asarray(inter['stem_conv']['__call__'][0], np.float64)
  bn_out = np.asarray(inter['stem_bn']['bn']['__call__'][0], np.float64)
  old = {k: np.asarray(v, np.float64) for k, v in variables['batch_stats']['stem_bn']['bn'].items()}
  stats = {k: np.asarray(v, np.float64) for k, v in new['batch_stats']['stem_bn']['bn'].items()}
  return variables, new, conv_out, bn_out, old, stats


def test_bn_running_average_decay_and_biased_variance():
  """One train-mode apply: running = 0.9 * old + 0.1 * batch, with the BIASED batch variance
  (32 values per channel: ddof=1 would be 3% larger). A second apply starts from the new stats."""
  variables, new, conv_out, _, old, stats = _stem_bn_io(30.0, 1)
  np.testing.assert_array_equal(old['mean'], 0)
  np.testing.assert_array_equal(old['var'], 1)
  mean = conv_out.mean(axis=(0, 1, 2))
  var = conv_out.var(axis=(0, 1, 2))  # ddof=0
  np.testing.assert_allclose(stats['mean'], 0.9 * old['mean'] + 0.1 * mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats['var'], 0.9 * old['var'] + 0.1 * var, rtol=1e-5)
  unbiased = 0.9 + 0.1 * conv_out.var(axis=(0, 1, 2), ddof=1)
  assert np.all(np.abs(stats['var'] - unbiased) > 1e-3 * unbiased)
  # Second step from the updated running averages.
  variables2 = {'params': variables['params'], 'batch_stats': new['batch_stats']}
  _, _, conv2, _, old2, stats2 = _stem_bn_io(30.0, 2, variables2)
  np.testing.assert_allclose(stats2['mean'], 0.9 * old2['mean'] + 0.1 * conv2.mean((0, 1, 2)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats2['var'], 0.9 * old2['var'] + 0.1 * conv2.var((0, 1, 2)),
                             rtol=1e-5)


def test_bn_epsilon_is_1e_5():
  """Small inputs so the batch variance (~1e-5) is comparable with epsilon: the normalised output
  matches (x - mean) / sqrt(var + 1e-5) and not Keras' default 1e-3 (or 1e-6)."""
  _, _, conv_out, bn_out, _, _ = _stem_bn_io(0.01, 3)
  mean = conv_out.mean(axis=(0, 1, 2))
  var = conv_out.var(axis=(0, 1, 2))
  assert 1e-7 < np.median(var) < 1e-3
  want = (conv_out - mean) / np.sqrt(var + 1e-5)
  np.testing.assert_allclose(bn_out, want, rtol=1e-3, atol=1e-4)
  for eps in (1e-3, 1e-6):
    assert np.abs(bn_out - (conv_out - mean) / np.sqrt(var + eps)).max() > 1e-2


# ----------------------------------------------------------------------------- padding

def _flax_conv(k, stride, x, features=5):
  conv = resnet.ConvFixedPadding(features, k, stride)
  variables = conv.init(jax.random.PRNGKey(k * 10 + stride), x)
  kernel = np.asarray(variables['params']['Conv_0']['kernel'])
  return np.asarray(conv.apply(variables, x)), kernel


@pytest.mark.parametrize('k,stride,size,pad', [(3, 2, 8, 1), (3, 2, 9, 1), (7, 2, 16, 3),
                                               (1, 2, 8, 0)])
def test_strided_conv_uses_fixed_padding(k, stride, size, pad):
  """Official conv2d_fixed_padding: pad (k-1)//2 on both sides, then VALID."""
  x = np.random.default_rng(k + size).normal(size=(2, size, size, 3)).astype(np.float32)
  got, kernel = _flax_conv(k, stride, jnp.asarray(x))
  padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
  want = tf.nn.conv2d(padded, kernel, strides=stride, padding='VALID').numpy()
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  if k > 1 and size % 2 == 0:  # TF 'SAME' pads (0, 1) / (2, 3) on even inputs: different.
    same = tf.nn.conv2d(x, kernel, strides=stride, padding='SAME').numpy()
    assert np.abs(got - same).max() > 1e-2


@pytest.mark.parametrize('k', [1, 3])
def test_stride1_conv_is_tf_same(k):
  x = np.random.default_rng(k).normal(size=(2, 7, 7, 3)).astype(np.float32)
  got, kernel = _flax_conv(k, 1, jnp.asarray(x))
  want = tf.nn.conv2d(x, kernel, strides=1, padding='SAME').numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _shortcut_pool(x, strides):
  """A ResNet-D shortcut with an identity 1x1 conv and BN at its init stats (inference):
  output = pool(x) / sqrt(1 + 1e-5), which isolates the pooling."""
  c = x.shape[-1]
  bn = functools.partial(resnet.BatchNormRelu, momentum=0.9)
  sc = resnet.Shortcut(features=c, strides=strides, resnet_d=True, bn=bn)
  variables = sc.init(jax.random.PRNGKey(0), x, train=False)
  params = jax.tree.map(lambda a: a, variables['params'])
  params['conv']['Conv_0']['kernel'] = jnp.eye(c).reshape(1, 1, c, c)
  out = sc.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, train=False)
  return np.asarray(out) * np.sqrt(1 + 1e-5)


@pytest.mark.parametrize('size', [6, 7])
def test_resnet_d_stride1_avg_pool_is_tf_same(size):
  """Official: AvgPool 2x2 stride 1 'SAME' (pad after, padding EXCLUDED from the mean)."""
  x = np.random.default_rng(size).uniform(size=(2, size, size, 4)).astype(np.float32)
  got = _shortcut_pool(jnp.asarray(x), 1)
  want = tf.nn.avg_pool2d(x, 2, 1, 'SAME').numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Power check: counting the zero padding would change the last row and column.
  incl = tf.nn.avg_pool2d(tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]]), 2, 1, 'VALID').numpy()
  assert np.abs(got[:, -1] - incl[:, -1]).max() > 1e-2
  # ... and it is a real 2x2 blur, not a no-op.
  assert np.abs(got - x).max() > 1e-2


@pytest.mark.parametrize('size', [8, 7])
def test_resnet_d_stride2_avg_pool(size):
  """Official: zero-pad (0, 1) explicitly, then AvgPool 2x2 stride 2 'VALID'."""
  x = np.random.default_rng(size).uniform(size=(2, size, size, 4)).astype(np.float32)
  got = _shortcut_pool(jnp.asarray(x), 2)
  want = tf.nn.avg_pool2d(tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]]), 2, 2, 'VALID').numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- heads

def _np_bn(x, scale, bias):
  mean, var = x.mean(0), x.var(0)
  y = (x - mean) / np.sqrt(var + 1e-5) * scale
  return y + bias if bias is not None else y


def _randomise(params, seed):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, l.shape) * 0.5 + (1.0 if l.ndim == 1
                                      else 0.0) for k, l in zip(keys, leaves)])


@pytest.mark.parametrize('mode,layers', [('none', 3), ('linear', 3), ('nonlinear', 2),
                                         ('nonlinear', 3)])
def test_projection_head_layout_and_forward(mode, layers):
  d, out_dim = 24, 16
  h = np.random.default_rng(0).normal(size=(8, d)).astype(np.float32)
  hiddens_count = {'none': 1, 'linear': 2, 'nonlinear': layers + 1}[mode]
  for selector in range(-1, hiddens_count):
    head = heads.ProjectionHead(mode=mode, out_dim=out_dim, num_layers=layers,
                                ft_proj_selector=selector)
    variables = head.init(jax.random.PRNGKey(0), jnp.asarray(h), train=True)
    shapes = {k: v.shape for k, v in _paths(variables.get('params', {})).items()}
    if mode == 'none':
      assert shapes == {}
    elif mode == 'linear':
      assert shapes == {'linear/dense/kernel': (d, out_dim), 'linear/bn_relu/bn/scale': (out_dim,)}
    else:
      want = {}
      for j in range(layers):
        last = j == layers - 1
        width = out_dim if last else d
        want[f'nl_{j}/dense/kernel'] = (d, width)  # no Dense bias anywhere
        want[f'nl_{j}/bn_relu/bn/scale'] = (width,)
        if not last:
          want[f'nl_{j}/bn_relu/bn/bias'] = (width,)  # centre only on hidden layers
      assert shapes == want
    if 'params' not in variables:
      params = {}
      (z, sel), _ = head.apply(variables, jnp.asarray(h), train=True, mutable=['batch_stats'])
    else:
      params = _randomise(variables['params'], selector + 5)
      (z, sel), _ = head.apply({'params': params, 'batch_stats': variables['batch_stats']},
                               jnp.asarray(h), train=True, mutable=['batch_stats'])
    p = _paths(jax.tree.map(lambda a: np.asarray(a, np.float64), params))
    hid = [h.astype(np.float64)]
    if mode == 'linear':
      hid.append(_np_bn(hid[0] @ p['linear/dense/kernel'], p['linear/bn_relu/bn/scale'], None))
    elif mode == 'nonlinear':
      for j in range(layers):
        pre = hid[-1] @ p[f'nl_{j}/dense/kernel']
        if j < layers - 1:
          hid.append(np.maximum(_np_bn(pre, p[f'nl_{j}/bn_relu/bn/scale'],
                                       p[f'nl_{j}/bn_relu/bn/bias']), 0))
        else:  # output layer: BN without centre, no ReLU.
          hid.append(_np_bn(pre, p[f'nl_{j}/bn_relu/bn/scale'], None))
    assert z.shape == (8, d if mode == 'none' else out_dim)
    np.testing.assert_allclose(np.asarray(z), hid[-1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(sel), hid[selector], rtol=1e-4, atol=1e-4)
    if mode != 'none':
      assert np.asarray(z).min() < 0  # no ReLU after the last layer


def test_dense_init_is_normal_001():
  """Official LinearLayer: RandomNormal(stddev=0.01) (not truncated), zero bias."""
  sup = heads.SupervisedHead(1000)
  v = sup.init(jax.random.PRNGKey(0), jnp.zeros((1, 2048)))['params']['dense']
  k = np.asarray(v['kernel'], np.float64)
  assert k.shape == (2048, 1000)
  assert abs(k.std() / 0.01 - 1) < 0.005
  assert abs(k.mean()) < 5 * 0.01 / np.sqrt(k.size)
  # A plain normal has 4.55% beyond 2 sigma; a truncated normal would have none.
  assert abs(np.mean(np.abs(k) > 0.02) - 0.0455) < 0.002
  np.testing.assert_array_equal(np.asarray(v['bias']), 0)
  z = heads.SupervisedHead(10, zero_init=True).init(jax.random.PRNGKey(0), jnp.zeros((1, 8)))
  assert all(np.all(np.asarray(a) == 0) for a in jax.tree.leaves(z))
  proj = heads.ProjectionHead(mode='linear', out_dim=1024)
  pk = np.asarray(proj.init(jax.random.PRNGKey(1), jnp.ones((4, 1024)), train=False)
                  ['params']['linear']['dense']['kernel'])
  assert abs(pk.std() / 0.01 - 1) < 0.01


def test_conv_init_is_variance_scaling_fan_in_truncated():
  """Official conv init: VarianceScaling(1.0, 'fan_in', truncated_normal): std 1/sqrt(fan_in),
  and no value beyond 2 std of the untruncated normal (std / 0.87962566)."""
  x = jnp.zeros((1, 4, 4, 256))
  k = np.asarray(resnet.ConvFixedPadding(256, 3).init(jax.random.PRNGKey(0), x)
                 ['params']['Conv_0']['kernel'], np.float64)
  std = 1 / np.sqrt(3 * 3 * 256)
  assert abs(k.std() / std - 1) < 0.01  # He init (sqrt(2) larger) would fail
  assert np.abs(k).max() <= 2 * std / 0.87962566 + 1e-6


# ----------------------------------------------------------------------------- full model, bf16

def test_simclr_model_outputs_and_bfloat16():
  config = test_config.get_config()
  config.model.dtype = 'bfloat16'
  model = models.build_model(config, num_classes=10)
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 16, 16, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(_fast_key(1), x)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
  (out, inter) = jax.jit(functools.partial(
      model.apply, train=True, capture_intermediates=True,
      mutable=['batch_stats', 'intermediates']))(variables, x)
  assert set(out) == {'features', 'projection', 'sup_logits'}
  width = int(512 * config.model.width_multiplier)
  assert out['features'].shape == (4, width)
  assert out['projection'].shape == (4, config.model.proj_out_dim)
  assert out['sup_logits'].shape == (4, 10)
  for v in out.values():
    assert v.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(v)))
  conv_out = inter['intermediates']['encoder']['stem_conv']['__call__'][0]
  assert conv_out.dtype == jnp.bfloat16  # the network really computes in bf16
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(inter['batch_stats']))


def test_remat_gives_the_same_parameters_gradients_and_statistics():
  """model.remat recomputes each residual block in the backward pass: the same function, so the
  same parameter tree, gradients and BN statistics (bitwise here on XLA:CPU in float32)."""
  config = test_config.get_config()  # ResNet-10: four residual blocks, each rematerialised.
  x = jax.random.uniform(jax.random.key(0), (8, 16, 16, 3))
  out = {}
  for remat in (False, True):
    config.model.remat = remat
    model = models.build_model(config, 10)
    v = jax.jit(functools.partial(model.init, train=False))(jax.random.key(1), x)

    def loss(p, model=model, v=v):
      o, new = model.apply({'params': p, 'batch_stats': v['batch_stats']}, x, train=True,
                           mutable=['batch_stats'])
      return jnp.sum(o['projection'] ** 2), new
    out[remat] = (v['params'],) + jax.jit(jax.grad(loss, has_aux=True))(v['params'])
  for a, b in zip(out[False], out[True]):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      assert jnp.array_equal(u, w)
