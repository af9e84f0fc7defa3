"""A 2-D convolution for XLA:CPU whose awkward parts are matrix products.

Same function and derivatives as `lax.conv_general_dilated` (NHWC input, HWIO kernel, explicit
padding, no dilation, one group); only how some parts are computed differs. Why: with XLA's
multi-threaded Eigen convolutions (xla_cpu.py) most convolutions and their gradients are fastest
left to XLA, but three kinds run several times slower than the same arithmetic as matrix
products (bench/conv_layers.py measures each layer; docs/performance.md has the figures):
- 1x1 convolutions' weight and input gradients;
- strided convolutions' input gradients, which XLA computes over an input-dilated map;
- feature maps smaller than the kernel (2x2 under 3x3, a ResNet-50's last stage at 64 px),
  where XLA swaps input and kernel and runs its naive loop emitter.
Here a weight gradient is one matrix product per kernel tap (dy^T @ shifted input), and an input
gradient is per tap dy @ w^T scattered back with an interior pad. Everything else (forward
passes, stride-1 3x3 gradients) stays XLA's.

`materialize` (below) is another CPU-only piece: residual blocks' outputs computed once, not
re-computed inside each weight gradient's layout change; `max_pool` the third: the ImageNet
stem's max pool with an element-wise gradient instead of XLA:CPU's scatter.

Used only when the model runs on the CPU backend (`model.conv_impl`, 'auto'): on TPU/GPU the
compilers' own convolution gradients are what those chips are built for.
"""

import functools
from typing import Any, Sequence

import jax
from jax import lax
import jax.numpy as jnp

from simclr_jax.models import resnet

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _xla_conv(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _taps(x, k: tuple[int, int], strides, padding, out_hw, pad_value=0.0):
  """The input pixels each kernel tap (i, j) meets: k[0] x k[1] arrays shaped like the output
  (N, Ho, Wo, C). Strided slices of the input padded with `pad_value`; no patch matrix is built."""
  (tl, bh), (ll, rh) = padding
  xp = (jnp.pad(x, ((0, 0), (tl, bh), (ll, rh), (0, 0)), constant_values=pad_value)
        if tl or bh or ll or rh else x)
  n, _, _, c = x.shape
  (sh, sw), (ho, wo) = strides, out_hw
  return [[lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                     (1, sh, sw, 1)) for j in range(k[1])] for i in range(k[0])]


def _place(piece, i: int, j: int, strides, padded_hw):
  """piece [N, Ho, Wo, C] put back where tap (i, j) read it: rows i, i + sh, ... and columns
  j, j + sw, ... of an otherwise zero [N, Hp, Wp, C] (an interior pad)."""
  (sh, sw), (hp, wp) = strides, padded_hw
  ho, wo = piece.shape[1:3]
  return lax.pad(piece, jnp.zeros((), piece.dtype),
                 ((0, 0, 0), (i, hp - i - ((ho - 1) * sh + 1), sh - 1),
                  (j, wp - j - ((wo - 1) * sw + 1), sw - 1), (0, 0, 0)))


def _small(x_shape, w_shape) -> bool:
  """Feature maps smaller than the kernel (2x2 under 3x3): XLA:CPU swaps input and kernel there
  and leaves its fast convolution path."""
  return x_shape[1] < w_shape[0] or x_shape[2] < w_shape[1]


def _out_hw(x_shape, w_shape, strides, padding) -> tuple[int, int]:
  return tuple((x_shape[1 + d] + sum(padding[d]) - w_shape[d]) // strides[d] + 1
               for d in range(2))


def _forward(x, w, strides, padding):
  if not _small(x.shape, w.shape):
    return _xla_conv(x, w, strides, padding)
  kh, kw, c, o = w.shape
  ho, wo = _out_hw(x.shape, w.shape, strides, padding)
  taps = _taps(x, (kh, kw), strides, padding, (ho, wo))
  y = sum(taps[i][j].reshape(-1, c) @ w[i, j] for i in range(kh) for j in range(kw))
  return y.reshape(x.shape[0], ho, wo, o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x, w, strides: tuple[int, int], padding: tuple[tuple[int, int], tuple[int, int]]):
  """y = conv(x [N,H,W,C], w [kh,kw,C,O]) with explicit ((top, bottom), (left, right)) padding."""
  return _forward(x, w, strides, padding)


def _conv_fwd(x, w, strides, padding):
  return _forward(x, w, strides, padding), (x, w)


def _conv_bwd(strides, padding, residuals, dy):
  x, w = residuals
  kh, kw, c, o = w.shape
  _, ho, wo, _ = dy.shape
  dy2 = dy.reshape(-1, o)
  small = _small(x.shape, w.shape)
  if kh == kw == 1 or small:  # k x k weight gradients: XLA's measured 1.2-2.4x faster.
    taps = _taps(x, (kh, kw), strides, padding, (ho, wo))
    # dW[i, j] = sum over (n, h, w) of x_tap(i, j)^T dy: a (C x NHW) @ (NHW x O) product per tap.
    dw = jnp.stack([jnp.stack([(dy2.T @ taps[i][j].reshape(-1, c)).T for j in range(kw)])
                    for i in range(kh)]).astype(w.dtype)
  else:
    dw = jax.vjp(lambda w_: _xla_conv(x, w_, strides, padding), w)[1](dy)[0]
  if kh == kw == 1 or strides != (1, 1) or small:
    dx = _scatter_input_grad(dy2, w, x.shape, strides, padding, (ho, wo))
  else:
    dx = jax.vjp(lambda x_: _xla_conv(x_, w, strides, padding), x)[1](dy)[0]
  return dx.astype(x.dtype), dw


def _scatter_input_grad(dy2, w, x_shape, strides, padding, out_hw):
  """dx for strided or 1x1 convolutions: per tap, dy @ w[i, j]^T lands on every s-th pixel of the
  padded input (an interior pad), and the taps are summed."""
  kh, kw, c, _ = w.shape
  n, h, wd, _ = x_shape
  ho, wo = out_hw
  (tl, bh), (ll, rh) = padding
  dxp = None
  for i in range(kh):
    for j in range(kw):
      piece = (dy2 @ w[i, j].T.astype(dy2.dtype)).reshape(n, ho, wo, c)
      piece = _place(piece, i, j, strides, (h + tl + bh, wd + ll + rh))
      dxp = piece if dxp is None else dxp + piece
  return dxp[:, tl:tl + h, ll:ll + wd, :]


conv.defvjp(_conv_fwd, _conv_bwd)


def _is_nhwc(dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, tuple) and all(isinstance(d, str) for d in dimension_numbers):
    return tuple(dimension_numbers) == NHWC
  return (tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
          and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
          and tuple(dimension_numbers.out_spec) == (0, 3, 1, 2))


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding: Any,
                         lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, precision=None, **kwargs):
  """Drop-in for `lax.conv_general_dilated` (as `flax.linen.Conv(conv_general_dilated=...)`):
  the matmul-gradient `conv` where it applies, lax otherwise."""
  plain = (lhs.ndim == 4 and _is_nhwc(dimension_numbers) and feature_group_count == 1
           and not isinstance(padding, str) and precision is None and not kwargs
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1))))
  if not plain:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision, **kwargs)
  pad = tuple((int(lo), int(hi)) for lo, hi in padding)
  return conv(lhs, rhs, tuple(int(s) for s in window_strides), pad)


def materialize(x, anchor):
  """x itself, computed once into a buffer of its own that every consumer reads.

  Why: XLA:CPU fuses a cheap element-wise producer into each of its consumers. A residual
  block's output (BN, addition, ReLU, and through an identity shortcut the previous block's as
  well: up to three BNs) was re-computed inside the weight gradients' NHWC -> CHWN transposes,
  element by element in a cache-hostile order, several times slower than reading it once from a
  buffer (docs/performance.md). XLA does not duplicate a division into several consumers, and x / 1 is
  exact, as is the gradient's g / 1. `one` must not be a constant (XLA drops x / 1) and must be
  a scalar (XLA turns a division by a per-channel vector into a product with its reciprocal,
  which it duplicates): it is anchor[0] * 0 + 1, which XLA does not fold for floats, under
  stop_gradient. A custom_vjp with an identity backward did not work: XLA then fused the
  division back in.
  """
  one = lax.stop_gradient(anchor.ravel()[0]).astype(x.dtype) * 0 + 1
  return x / one


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, window: tuple[int, int], strides: tuple[int, int],
             padding: tuple[tuple[int, int], tuple[int, int]]):
  """Max pooling (NHWC, explicit padding) whose gradient avoids select_and_scatter on CPU.

  Why: XLA:CPU runs the max pool's gradient (select_and_scatter) as a scatter, 2-3x slower than
  this (docs/performance.md).
  Here the gradient is element-wise: each output's first window tap (row-major) that holds the
  maximum receives dy (where TensorFlow's MaxPoolGrad and select_and_scatter with `ge` send it),
  placed back with an interior pad. The forward pass is XLA's reduce_window.
  """
  return lax.reduce_window(x, -jnp.inf, lax.max, (1,) + window + (1,), (1,) + strides + (1,),
                           ((0, 0),) + tuple(padding) + ((0, 0),))


def _max_pool_fwd(x, window, strides, padding):
  y = max_pool(x, window, strides, padding)
  return y, (x, y)


def _max_pool_bwd(window, strides, padding, residuals, dy):
  x, y = residuals
  (tl, bh), (ll, rh) = padding
  padded_hw = (x.shape[1] + tl + bh, x.shape[2] + ll + rh)
  taps = [t for row in _taps(x, window, strides, padding, y.shape[1:3], -jnp.inf) for t in row]
  first = jnp.full(y.shape, len(taps), jnp.int32)  # The first tap (row-major) with the max.
  for t in reversed(range(len(taps))):
    first = jnp.where(taps[t] == y, t, first)
  zero = jnp.zeros((), dy.dtype)
  dxp = None
  for t in range(len(taps)):
    piece = _place(jnp.where(first == t, dy, zero), t // window[1], t % window[1], strides,
                   padded_hw)
    dxp = piece if dxp is None else dxp + piece
  return (dxp[:, tl:tl + x.shape[1], ll:ll + x.shape[2], :].astype(x.dtype),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


# What the encoder uses on XLA:CPU (models.resnet.Ops; cpu.model_ops picks it).
CPU_OPS = resnet.Ops(conv_general_dilated=conv_general_dilated, max_pool=max_pool,
                     block_output=materialize)
