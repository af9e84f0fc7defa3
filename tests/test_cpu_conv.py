"""models/kernels.py: the matrix-product backward pass computes the same derivatives as XLA's."""

import dataclasses
import re

import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from simclr_jax import models
from simclr_jax.cpu import kernels
from simclr_jax.cpu import ops as cpu_ops
from simclr_jax.models import resnet

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _case(seed, n, h, w, c, o, k):
  rng = np.random.RandomState(seed)
  x = rng.randn(n, h, w, c).astype(np.float32)
  kern = (rng.randn(k, k, c, o) / np.sqrt(k * k * c)).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(kern)


def _rel(a, b):
  """max |a - b| / max |b| (0 when both are all zeros, e.g. behind a zero-initialised BN)."""
  return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))


# (n, h, w, c, o, k, stride, padding): every shape the zoo uses, plus odd sizes and the 7x7 stem's
# symmetric padding at strides that leave the last rows/columns of the input unread.
CASES = [
    (2, 8, 8, 3, 8, 3, 1, ((1, 1), (1, 1))),      # CIFAR stem / basic 3x3
    (2, 9, 7, 8, 16, 3, 2, ((1, 1), (1, 1))),     # strided 3x3, odd sizes
    (2, 8, 8, 8, 16, 1, 2, ((0, 0), (0, 0))),     # strided 1x1 projection shortcut
    (2, 6, 6, 8, 8, 1, 1, ((0, 0), (0, 0))),      # 1x1 (bottleneck, shortcut at stride 1)
    (2, 15, 13, 3, 8, 7, 2, ((3, 3), (3, 3))),    # ImageNet stem, input not covered to the end
    (1, 5, 5, 4, 4, 3, 1, ((0, 2), (1, 0))),      # asymmetric padding
    (2, 2, 2, 8, 8, 3, 1, ((1, 1), (1, 1))),      # small maps: forward as matrix products too
    (2, 3, 4, 8, 8, 3, 2, ((1, 1), (1, 1))),
    (2, 1, 1, 8, 8, 3, 1, ((1, 1), (1, 1))),
]


@pytest.mark.parametrize('n,h,w,c,o,k,s,pad', CASES)
def test_values_and_gradients_equal_xla(n, h, w, c, o, k, s, pad):
  x, kern = _case(0, n, h, w, c, o, k)

  def ref(x, kern):
    return lax.conv_general_dilated(x, kern, (s, s), pad, dimension_numbers=NHWC)

  def ours(x, kern):
    return kernels.conv(x, kern, (s, s), pad)

  y_ref, vjp_ref = jax.vjp(ref, x, kern)
  y, vjp = jax.vjp(ours, x, kern)
  dy = jnp.asarray(np.random.RandomState(1).randn(*y_ref.shape).astype(np.float32))
  assert y.shape == y_ref.shape
  assert _rel(y, y_ref) < 1e-6
  dx_ref, dw_ref = vjp_ref(dy)
  dx, dw = jax.jit(lambda dy: vjp(dy))(dy)
  assert dx.shape == x.shape and dw.shape == kern.shape
  assert _rel(dx, dx_ref) < 1e-5
  assert _rel(dw, dw_ref) < 1e-5


@pytest.mark.parametrize('n,h,w,c,o,k,s,pad', [
    (2, 7, 6, 3, 4, 1, 2, ((0, 0), (0, 0))),  # 1x1 strided: products
    (2, 2, 2, 3, 4, 3, 1, ((1, 1), (1, 1))),  # map smaller than the kernel: products
])
def test_weight_gradient_matches_numpy_loops(n, h, w, c, o, k, s, pad):
  """An independent reference: dW[i,j,c,o] = sum_{n,h,w} xpad[n, h*s+i, w*s+j, c] dy[n,h,w,o]."""
  x, kern = _case(2, n, h, w, c, o, k)
  y, vjp = jax.vjp(lambda kk: kernels.conv(x, kk, (s, s), pad), kern)
  dy = np.random.RandomState(3).randn(*y.shape)
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), pad[0], pad[1], (0, 0)))
  want = np.zeros((k, k, c, o))
  for i in range(k):
    for j in range(k):
      for a in range(y.shape[1]):
        for b in range(y.shape[2]):
          want[i, j] += xp[:, a * s + i, b * s + j, :].T @ dy[:, a, b, :]
  got = vjp(jnp.asarray(dy, jnp.float32))[0]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_other_convolutions_fall_back_to_lax():
  x, kern = _case(4, 2, 8, 8, 4, 4, 3)
  grouped = kern[:, :, :2, :]
  got = kernels.conv_general_dilated(x, grouped, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=NHWC, feature_group_count=2)
  want = lax.conv_general_dilated(x, grouped, (1, 1), ((1, 1), (1, 1)),
                                  dimension_numbers=NHWC, feature_group_count=2)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  got = kernels.conv_general_dilated(x, kern, (1, 1), 'SAME', dimension_numbers=NHWC)
  want = lax.conv_general_dilated(x, kern, (1, 1), 'SAME', dimension_numbers=NHWC)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_model_gradients_equal_with_either_impl(depth=18, sk=0.0, size=36):
  """The whole encoder (ImageNet stem, strided blocks, projection shortcuts): same outputs, same
  gradients, same BN statistics, whichever convolution gradient is used. (Each bottleneck and SK
  convolution shape is one of CASES; a ResNet-50 here would double this file's time.)"""
  x = jnp.asarray(np.random.RandomState(5).rand(4, size, size, 3).astype(np.float32))
  results = []
  for ops in (resnet.XLA_OPS, kernels.CPU_OPS):
    enc = models.build_encoder(depth, 0.25, sk, cifar_stem=size <= 32, ops=ops)
    variables = enc.init(jax.random.PRNGKey(0), x, train=False)

    def loss(params, enc=enc, variables=variables):
      f, new = enc.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                         train=True, mutable=['batch_stats'])
      return jnp.sum(jnp.sin(f)), new
    (value, new), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])
    results.append((value, grads, new))
  (v0, g0, b0), (v1, g1, b1) = results
  np.testing.assert_allclose(float(v1), float(v0), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    assert _rel(a, b) < 1e-4
  for a, b in zip(jax.tree.leaves(b1), jax.tree.leaves(b0)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_auto_picks_matmul_only_for_cpu_runs():
  config = default.get_config()
  assert config.model.conv_impl == 'auto'  # The default.
  assert jax.default_backend() == 'cpu'
  assert cpu_ops.resolve_conv_impl(config) == 'matmul_grad'
  config.hardware.chip = 'v3'  # A compile-only plan for TPUs keeps the accelerator program.
  assert cpu_ops.resolve_conv_impl(config) == 'xla'
  config.model.conv_impl = 'xla'
  config.hardware.chip = 'cpu'
  assert cpu_ops.resolve_conv_impl(config) == 'xla'
  old = ml_collections.ConfigDict({'model': {'dtype': 'float32'}})  # A run from before the key.
  assert cpu_ops.resolve_conv_impl(old) == 'xla'
  config.model.conv_impl = 'fast'
  with pytest.raises(ValueError, match="conv_impl='fast'"):
    cpu_ops.resolve_conv_impl(config)
  config.model.conv_impl = 'auto'
  assert cpu_ops.model_ops(config) is kernels.CPU_OPS
  config.model.conv_impl = 'xla'
  assert cpu_ops.model_ops(config) is resnet.XLA_OPS


def test_materialize_is_the_identity_in_value_and_gradient():
  """x / 1 and g / 1 are exact, so `materialize` changes nothing but where XLA keeps x (signs,
  zeros of either sign, huge values included; no subnormals, which XLA:CPU flushes in every op)."""
  rng = np.random.RandomState(0)
  x = np.concatenate([rng.randn(1000) * 10.0 ** rng.randint(-30, 30, 1000),
                      [0.0, -0.0, 3.4e38, -3.4e38, 1.2e-38]]).astype(np.float32)
  g = rng.randn(x.size).astype(np.float32)
  anchor = jnp.asarray([0.37, -2.0], jnp.float32)
  y, vjp = jax.vjp(lambda v: kernels.materialize(v, anchor), jnp.asarray(x))
  (gx,) = vjp(jnp.asarray(g))
  np.testing.assert_array_equal(np.asarray(y).view(np.uint32), x.view(np.uint32))
  np.testing.assert_array_equal(np.asarray(gx).view(np.uint32), g.view(np.uint32))
  d_anchor = jax.grad(lambda a: jnp.sum(kernels.materialize(jnp.asarray(x), a)))(anchor)
  assert d_anchor.tolist() == [0, 0]


def _transpose_operands_into_convolutions(ops=kernels.CPU_OPS):
  """Operand counts of the fusions that lay out a convolution's input in the compiled gradient of
  a ResNet-18 (the weight gradients' NHWC -> CHWN transposes)."""
  x = jnp.asarray(np.random.RandomState(1).rand(8, 32, 32, 3).astype(np.float32))
  enc = models.build_encoder(18, 0.5, 0.0, cifar_stem=True, ops=ops)
  variables = enc.init(jax.random.PRNGKey(0), x, train=False)

  def loss(params):
    f, _ = enc.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, train=True,
                     mutable=['batch_stats'])
    return jnp.sum(jnp.sin(f))
  hlo = jax.jit(jax.grad(loss)).lower(variables['params']).compile().as_text()
  entry = hlo[hlo.index('\nENTRY'):]
  defs = {name: (shape, args) for name, shape, args in
          re.findall(r'\n\s*(?:ROOT )?%(\S+) = f32\[([\d,]+)\]\S* fusion\(([^)]*)\)', entry)}
  counts = []
  for args in re.findall(r'= \S+ convolution\(([^)]*)\)', entry):
    for name in re.findall(r'%([\w.\-]+)', args):
      shape, operands = defs.get(name, ('', ''))
      if name.startswith('transpose') and shape.endswith(f',{x.shape[0]}'):  # [C, H, W, N]
        counts.append(operands.count('%'))
  return counts


def test_block_outputs_are_not_recomputed_inside_weight_gradient_transposes():
  """The point of `materialize`, read from XLA's compiled program: with it, no transpose feeding
  a weight gradient re-computes more than one BN + ReLU (5 operands: the convolution output,
  its statistics, scale and offset); without it (materialize replaced by the identity), some
  re-compute whole residual blocks (10-15 operands), so this test can fail."""
  with_it = _transpose_operands_into_convolutions()
  without = _transpose_operands_into_convolutions(
      dataclasses.replace(kernels.CPU_OPS, block_output=lambda x, anchor: x))
  assert with_it and max(with_it) <= 5, with_it
  assert max(without) > 5, without


def _numpy_max_pool_grad(x, dy, k, s, pads):
  """TensorFlow's MaxPoolGrad by loops: each window's dy goes to its first (row-major) maximum."""
  (tl, _), (ll, _) = pads
  xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-np.inf)
  dxp = np.zeros_like(xp)
  n, ho, wo, c = dy.shape
  for b in range(n):
    for i in range(ho):
      for j in range(wo):
        for ch in range(c):
          win = xp[b, i * s:i * s + k, j * s:j * s + k, ch]
          r, q = np.unravel_index(np.argmax(win), win.shape)  # argmax: the first maximum.
          dxp[b, i * s + r, j * s + q, ch] += dy[b, i, j, ch]
  return dxp[:, tl:tl + x.shape[1], ll:ll + x.shape[2]]


@pytest.mark.parametrize('shape', [(2, 9, 10, 3), (1, 8, 8, 2), (2, 5, 4, 1)])
def test_max_pool_gradient_routes_to_the_first_maximum(shape):
  """Ties are the normal case after a ReLU (windows of zeros); the gradient must go where
  TensorFlow's MaxPoolGrad and XLA's select_and_scatter send it: the window's first maximum."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(3)
  x = np.maximum(np.round(rng.randn(*shape) * 2) / 2, 0).astype(np.float32)  # Many ties.
  pads = tuple(tuple(int(v) for v in p)
               for p in lax.padtype_to_pads(shape[1:3], (3, 3), (2, 2), 'SAME'))
  ours = lambda x: kernels.max_pool(x, (3, 3), (2, 2), pads)
  flax_pool = lambda x: nn.max_pool(x, (3, 3), (2, 2), padding='SAME')
  y = jax.jit(ours)(jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(y), np.asarray(flax_pool(jnp.asarray(x))))
  dy = rng.randn(*y.shape).astype(np.float32)
  dx = np.asarray(jax.jit(lambda x, g: jax.vjp(ours, x)[1](g)[0])(jnp.asarray(x), dy))
  want = _numpy_max_pool_grad(x, dy, 3, 2, pads)
  np.testing.assert_array_equal(dx != 0, want != 0)
  np.testing.assert_allclose(dx, want, rtol=1e-6, atol=1e-6)
  via_xla = jax.vjp(flax_pool, jnp.asarray(x))[1](jnp.asarray(dy))[0]
  np.testing.assert_allclose(dx, np.asarray(via_xla), rtol=1e-6, atol=1e-6)
  dx16 = jax.vjp(ours, jnp.asarray(x, jnp.bfloat16))[1](jnp.asarray(dy, jnp.bfloat16))[0]
  assert dx16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(dx16, np.float32), want, rtol=2e-2, atol=2e-2)


def test_max_pool_gradient_is_not_a_scatter():
  """The reason for kernels.max_pool: no select_and_scatter (a scatter on XLA:CPU) remains."""
  x = jnp.zeros((2, 16, 16, 4))
  ours = lambda x: kernels.max_pool(x, (3, 3), (2, 2), ((0, 1), (0, 1)))
  hlo = jax.jit(lambda x: jax.grad(lambda x: jnp.sum(ours(x) ** 2))(x)).lower(x).compile()
  text = hlo.as_text()
  assert 'select-and-scatter' not in text and 'scatter(' not in text
