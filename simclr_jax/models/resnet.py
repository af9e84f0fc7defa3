"""ResNet v1 as the official SimCLR code builds it, so official checkpoints map onto it one to one.

What makes it "the official ResNet" rather than any ResNet (each detail changes either the numbers
or the parameter layout):
- every conv has no bias, kernel init VarianceScaling(1.0, fan_in, truncated normal);
- strided convs pad (k-1)//2 on both sides then convolve VALID (TF `fixed_padding`), stride-1 convs
  pad SAME; Flax's 'SAME' on strided convs pads asymmetrically and would differ;
- BN epsilon 1e-5, decay 0.9, and the last BN of every residual block starts with gamma = 0;
- the first block of EVERY group has a projection shortcut (even 64 -> 64 in ResNet-18/34);
- bottleneck blocks stride on the 3x3 conv;
- `sk_ratio > 0` (SimCLRv2) switches to the ResNet-D deep stem, average-pool shortcuts and a
  selective-kernel 3x3 conv in bottlenecks;
- a CIFAR stem (3x3 stride-1 conv, no max-pool) for images of at most 32 pixels.

Output: globally average-pooled features [B, 512*w] (depth 10/18/34) or [B, 2048*w] (50+).

Fine-tuning (`fine_tune_after_block` = k >= 0, official flag): the stem (k >= 0) and groups 1..k
are frozen: their BN layers run in inference mode (moving averages, no statistics update) and a
stop_gradient sits at the input of group k+1, so no gradient reaches them. k = 4 freezes the whole
encoder; the default -1 changes nothing. Parameter names do not depend on k.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

# Blocks per group. Depth 10 is not in the paper: one basic block per group, for tests and demos.
BLOCKS_PER_GROUP = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
BOTTLENECK_MIN_DEPTH = 50
BN_EPSILON = 1e-5
SK_MIN_DIM = 32

conv_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')


@dataclasses.dataclass(frozen=True)
class Ops:
  """How the encoder computes three things whose values and derivatives are fixed but whose
  implementation a backend may choose (the model itself knows no backend): every default is
  XLA's own; simclr_jax/cpu/kernels.py supplies faster ones for XLA:CPU.

  conv_general_dilated: nn.Conv's, with lax.conv_general_dilated's signature (None: lax's).
  max_pool: fn(x, window, strides, pads) for the stem's 3x3/2 'SAME' pool (None: nn.max_pool).
  block_output: fn(out, anchor) -> out, applied to each residual block's output; `anchor` is the
    block's last BN scale (None: the output as it is).
  """
  conv_general_dilated: Optional[Callable] = None
  max_pool: Optional[Callable] = None
  block_output: Optional[Callable] = None


XLA_OPS = Ops()


def uses_bottleneck(depth: int) -> bool:
  return depth >= BOTTLENECK_MIN_DEPTH


def feature_dim(depth: int, width_multiplier: float) -> int:
  """Width of the pooled encoder output."""
  return int(512 * width_multiplier) * (4 if uses_bottleneck(depth) else 1)


class ConvFixedPadding(nn.Module):
  """Conv without bias; symmetric (k-1)//2 padding, which equals TF's SAME at stride 1 (odd k)
  and TF's `fixed_padding` + VALID at stride > 1."""
  features: int
  kernel_size: int
  strides: int = 1
  dtype: Any = jnp.float32
  ops: Ops = XLA_OPS

  @nn.compact
  def __call__(self, x):
    pad = (self.kernel_size - 1) // 2
    return nn.Conv(
        self.features, (self.kernel_size, self.kernel_size), (self.strides, self.strides),
        padding=((pad, self.kernel_size - 1 - pad),) * 2, use_bias=False, dtype=self.dtype,
        kernel_init=conv_kernel_init,
        conv_general_dilated=self.ops.conv_general_dilated)(x)


class BatchNormRelu(nn.Module):
  """BN (+ optional ReLU). Under jit over a sharded batch its statistics are global.

  The variance is E[x^2] - E[x]^2 from one pass over the activations (float32 statistics), as the
  official code's global BN (Keras SyncBatchNormalization: all-reduced sum and sum of squares)
  computes it. The two-pass E[(x - mean)^2] reads every activation once more: 18% more bytes and
  15% more time per step in the TPU compiler's cost model for R50 on v3 (bench/tpu_anchor.py)."""
  relu: bool = True
  init_zero: bool = False
  center: bool = True
  momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.BatchNorm(
        use_running_average=not train, momentum=self.momentum, epsilon=BN_EPSILON,
        use_bias=self.center, dtype=self.dtype, use_fast_variance=True,
        scale_init=nn.initializers.zeros if self.init_zero else nn.initializers.ones,
        name='bn')(x)
    return nn.relu(x) if self.relu else x


class SelectiveKernel(nn.Module):
  """SimCLRv2's two-branch selective-kernel 3x3 conv (includes its own BN + ReLU)."""
  features: int
  strides: int
  sk_ratio: float
  bn: Any
  dtype: Any = jnp.float32
  ops: Ops = XLA_OPS

  @nn.compact
  def __call__(self, x, train: bool):
    f = self.features
    y = ConvFixedPadding(2 * f, 3, self.strides, self.dtype, self.ops, name='conv')(x)
    y = self.bn(name='bn_conv')(y, train)
    b0, b1 = y[..., :f], y[..., f:]
    g = jnp.mean(b0 + b1, axis=(1, 2), keepdims=True)
    mid = max(int(f * self.sk_ratio), SK_MIN_DIM)
    g = ConvFixedPadding(mid, 1, 1, self.dtype, self.ops, name='fc_reduce')(g)
    g = self.bn(name='bn_reduce')(g, train)
    a = ConvFixedPadding(2 * f, 1, 1, self.dtype, self.ops, name='fc_attention')(g)
    a = nn.softmax(jnp.stack([a[..., :f], a[..., f:]], axis=0), axis=0)
    return a[0] * b0 + a[1] * b1


class Shortcut(nn.Module):
  """Projection shortcut: 1x1 strided conv + BN, or (ResNet-D) 2x2 average pool + 1x1 conv + BN."""
  features: int
  strides: int
  resnet_d: bool
  bn: Any
  dtype: Any = jnp.float32
  ops: Ops = XLA_OPS

  @nn.compact
  def __call__(self, x, train: bool):
    strides = self.strides
    if self.resnet_d:
      if strides > 1:
        x = nn.avg_pool(x, (2, 2), (2, 2), padding=((0, 1), (0, 1)))
      else:  # TF's stride-1 SAME average pool: pads after, and excludes the padding from the mean.
        x = nn.avg_pool(x, (2, 2), (1, 1), padding='SAME', count_include_pad=False)
      strides = 1
    x = ConvFixedPadding(self.features, 1, strides, self.dtype, self.ops, name='conv')(x)
    return self.bn(relu=False, name='bn')(x, train)


class ResidualBlock(nn.Module):
  """Basic (two 3x3) or bottleneck (1x1, 3x3 or SK, 1x1 x4) block; stride on the 3x3."""
  filters: int
  strides: int
  use_projection: bool
  bottleneck: bool
  sk_ratio: float
  bn: Any
  dtype: Any = jnp.float32
  ops: Ops = XLA_OPS

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(ConvFixedPadding, dtype=self.dtype, ops=self.ops)
    out_features = 4 * self.filters if self.bottleneck else self.filters
    shortcut = x
    if self.use_projection:
      shortcut = Shortcut(out_features, self.strides, self.sk_ratio > 0, self.bn, self.dtype,
                          self.ops, name='shortcut')(x, train)
    if self.bottleneck:
      y = conv(self.filters, 1, 1, name='conv1')(x)
      y = self.bn(name='bn1')(y, train)
      if self.sk_ratio > 0:
        y = SelectiveKernel(self.filters, self.strides, self.sk_ratio, self.bn, self.dtype,
                            self.ops, name='sk_conv2')(y, train)
      else:
        y = conv(self.filters, 3, self.strides, name='conv2')(y)
        y = self.bn(name='bn2')(y, train)
      y = conv(out_features, 1, 1, name='conv3')(y)
      y = self.bn(relu=False, init_zero=True, name='bn3')(y, train)
    else:
      y = conv(self.filters, 3, self.strides, name='conv1')(x)
      y = self.bn(name='bn1')(y, train)
      y = conv(self.filters, 3, 1, name='conv2')(y)
      y = self.bn(relu=False, init_zero=True, name='bn2')(y, train)
    out = nn.relu(y + shortcut)
    if self.ops.block_output is not None:
      params = self.variables['params']
      out = self.ops.block_output(out, params['bn3' if self.bottleneck else 'bn2']['bn']['scale'])
    return out


class ResNet(nn.Module):
  """The SimCLR encoder f: images [B, H, W, 3] float -> pooled features [B, D] (float32)."""
  depth: int
  width_multiplier: float = 1.0
  sk_ratio: float = 0.0
  cifar_stem: bool = False
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  fine_tune_after_block: int = -1  # -1: all trainable; k in 0..4: freeze stem and groups 1..k.
  ops: Ops = XLA_OPS  # How convolutions, the stem pool and block outputs are computed.
  # Recompute each residual block's activations in the backward pass instead of storing them
  # (flax.linen.remat): the same function and gradients, about a third more compute, and only
  # block inputs kept for backward; what lets the paper's largest batches fit (plan --max_batch).
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    k = self.fine_tune_after_block
    if self.depth not in BLOCKS_PER_GROUP:
      raise ValueError(f'resnet_depth={self.depth} is not supported; allowed: '
                       f'{sorted(BLOCKS_PER_GROUP)}.')
    bn = functools.partial(BatchNormRelu, momentum=self.bn_momentum, dtype=self.dtype)
    conv = functools.partial(ConvFixedPadding, dtype=self.dtype, ops=self.ops)
    w = self.width_multiplier
    x = x.astype(self.dtype)
    train_stem = train and k < 0  # Frozen parts keep BN in inference mode.
    if self.cifar_stem:
      x = conv(int(64 * w), 3, 1, name='stem_conv')(x)
      x = bn(name='stem_bn')(x, train_stem)
    else:
      if self.sk_ratio > 0:  # ResNet-D deep stem: three 3x3 convs.
        x = conv(int(64 * w) // 2, 3, 2, name='stem_conv1')(x)
        x = bn(name='stem_bn1')(x, train_stem)
        x = conv(int(64 * w) // 2, 3, 1, name='stem_conv2')(x)
        x = bn(name='stem_bn2')(x, train_stem)
        x = conv(int(64 * w), 3, 1, name='stem_conv3')(x)
        x = bn(name='stem_bn3')(x, train_stem)
      else:
        x = conv(int(64 * w), 7, 2, name='stem_conv')(x)
        x = bn(name='stem_bn')(x, train_stem)
      if self.ops.max_pool is not None:
        pads = jax.lax.padtype_to_pads(x.shape[1:3], (3, 3), (2, 2), 'SAME')
        x = self.ops.max_pool(x, (3, 3), (2, 2), tuple((int(a), int(b)) for a, b in pads))
      else:
        x = nn.max_pool(x, (3, 3), (2, 2), padding='SAME')
    bottleneck = uses_bottleneck(self.depth)
    # static_argnums=(2,): `train` (argument 2, after self and x) is a Python bool.
    block = nn.remat(ResidualBlock, static_argnums=(2,)) if self.remat else ResidualBlock
    for g, (num_blocks, base) in enumerate(zip(BLOCKS_PER_GROUP[self.depth], (64, 128, 256, 512))):
      if k == g:  # Input of group g+1: nothing before it is trained.
        x = jax.lax.stop_gradient(x)
      for b in range(num_blocks):
        x = block(
            filters=int(base * w), strides=(1 if g == 0 else 2) if b == 0 else 1,
            use_projection=b == 0, bottleneck=bottleneck, sk_ratio=self.sk_ratio, bn=bn,
            dtype=self.dtype, ops=self.ops,
            name=f'group{g + 1}_block{b}')(x, train and g + 1 > k)
    if k >= len(BLOCKS_PER_GROUP[self.depth]):
      x = jax.lax.stop_gradient(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
