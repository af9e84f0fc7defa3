"""An independent TensorFlow re-implementation of the official SimCLR model (google-research/simclr,
`tf2/resnet.py`, `tf2/model.py`), in inference mode, for the conversion tests.

Written from reading the official code, not from simclr_jax: the modules are tf.Modules whose
attribute names and list positions are those of the official Keras layers (padding, pooling,
identity and DropBlock layers included, as they shift list positions), so a `tf.train.Checkpoint`
of `Model` has the official TF2 keys. Variables are also named as the TF1 code names them
(`base_model/conv2d_K/kernel`, numbered in the TF1 code's creation order, which the constructors
follow), for writing TF1-layout checkpoints.

A `Factory` without a seed creates shape-only placeholders, so the released sizes (up to ResNet-152
3x with SK, 795M parameters) can be laid out without allocating them.

The forward pass uses TF ops in float64: strided convolutions pad (k-1)//2 before and the rest after
then convolve VALID, stride-1 convolutions pad SAME; BN uses moving statistics, epsilon 1e-5.
"""

import numpy as np
import tensorflow as tf

EPS = 1e-5


class Shape:
  """A variable that exists only as a shape."""

  def __init__(self, shape):
    self.shape = tuple(shape)


class Factory:
  """Makes variables (random, seeded) or placeholders (seed None); records TF1 names."""

  def __init__(self, seed=None):
    self.rng = None if seed is None else np.random.default_rng(seed)
    self.tf1 = []  # (TF1 name, variable) in creation order.
    self.num_conv = 0
    self.num_bn = 0

  def make(self, tf1_name, shape, sample):
    v = Shape(shape) if self.rng is None else tf.Variable(
        sample(self.rng, shape).astype(np.float32))
    self.tf1.append((tf1_name, v))
    return v

  def conv_name(self):
    k, self.num_conv = self.num_conv, self.num_conv + 1
    return 'base_model/conv2d' + (f'_{k}' if k else '')

  def bn_name(self):
    k, self.num_bn = self.num_bn, self.num_bn + 1
    return 'base_model/batch_normalization' + (f'_{k}' if k else '')


def _f64(v):
  return tf.cast(v, tf.float64)


class Conv2D(tf.Module):
  """A Keras Conv2D without bias; `kernel` [k, k, in, out]."""

  def __init__(self, f, cin, cout, k, strides, name):
    super().__init__()
    fan_in = k * k * cin
    self.kernel = f.make(f'{name}/kernel', (k, k, cin, cout),
                         lambda r, s: r.normal(0, np.sqrt(2.0 / fan_in), s))
    self.k, self.strides = k, strides

  def __call__(self, x):
    if self.strides > 1:  # The official fixed_padding, then VALID.
      beg = (self.k - 1) // 2
      end = self.k - 1 - beg
      x = tf.pad(x, [[0, 0], [beg, end], [beg, end], [0, 0]])
      return tf.nn.conv2d(x, _f64(self.kernel), self.strides, 'VALID')
    return tf.nn.conv2d(x, _f64(self.kernel), 1, 'SAME')


class NoVariables(tf.Module):
  """A layer without variables: its place in a list still counts."""

  def __init__(self, fn):
    super().__init__()
    self.fn = fn

  def __call__(self, x):
    return self.fn(x)


class Conv2dFixedPadding(tf.Module):

  def __init__(self, f, cin, cout, k, strides):
    super().__init__()
    if strides > 1:
      self.fixed_padding = NoVariables(lambda x: x)  # Conv2D pads itself (see above).
    self.conv2d = Conv2D(f, cin, cout, k, strides, f.conv_name())

  def __call__(self, x):
    return self.conv2d(x)


class BatchNorm(tf.Module):

  def __init__(self, f, c, center, name, zero_gamma=False):
    super().__init__()
    low, high = (0.1, 0.5) if zero_gamma else (0.7, 1.3)  # Smaller scales on residual branches.
    self.gamma = f.make(f'{name}/gamma', (c,), lambda r, s: r.uniform(low, high, s))
    if center:
      self.beta = f.make(f'{name}/beta', (c,), lambda r, s: r.normal(0, 0.2, s))
    self.moving_mean = f.make(f'{name}/moving_mean', (c,), lambda r, s: r.normal(0, 0.2, s))
    self.moving_variance = f.make(f'{name}/moving_variance', (c,),
                                  lambda r, s: r.uniform(0.5, 2.0, s))

  def __call__(self, x):
    beta = _f64(self.beta) if hasattr(self, 'beta') else None
    return tf.nn.batch_normalization(x, _f64(self.moving_mean), _f64(self.moving_variance),
                                     beta, _f64(self.gamma), EPS)


class BatchNormRelu(tf.Module):

  def __init__(self, f, c, relu=True, center=True, name=None, zero_gamma=False):
    super().__init__()
    self.bn = BatchNorm(f, c, center, name or f.bn_name(), zero_gamma)
    self.relu = relu

  def __call__(self, x):
    x = self.bn(x)
    return tf.nn.relu(x) if self.relu else x


def _resnet_d_pool(strides):
  if strides > 1:  # fixed_padding(2): nothing before, one after; then a VALID 2x2 average.
    return [NoVariables(lambda x: tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]])),
            NoVariables(lambda x: tf.nn.avg_pool2d(x, 2, strides, 'VALID'))]
  return [NoVariables(lambda x: tf.nn.avg_pool2d(x, 2, 1, 'SAME'))]


def _shortcut(f, cin, cout, strides, sk):
  if sk:
    return _resnet_d_pool(strides) + [Conv2dFixedPadding(f, cin, cout, 1, 1),
                                      BatchNormRelu(f, cout, relu=False)]
  return [Conv2dFixedPadding(f, cin, cout, 1, strides), BatchNormRelu(f, cout, relu=False)]


def _sequential(layers, x):
  for layer in layers:
    x = layer(x)
  return x


class SKConv2D(tf.Module):

  def __init__(self, f, cin, filters, strides, sk_ratio):
    super().__init__()
    self.conv2d_fixed_padding = Conv2dFixedPadding(f, cin, 2 * filters, 3, strides)
    self.batch_norm_relu = BatchNormRelu(f, 2 * filters)
    mid = max(int(filters * sk_ratio), 32)
    self.conv2d_0 = Conv2D(f, filters, mid, 1, 1, f.conv_name())
    self.batch_norm_relu_1 = BatchNormRelu(f, mid)
    self.conv2d_1 = Conv2D(f, mid, 2 * filters, 1, 1, f.conv_name())

  def __call__(self, x):
    x = self.batch_norm_relu(self.conv2d_fixed_padding(x))
    streams = tf.stack(tf.split(x, 2, axis=3))
    g = tf.reduce_mean(tf.reduce_sum(streams, 0), [1, 2], keepdims=True)
    mix = self.conv2d_1(self.batch_norm_relu_1(self.conv2d_0(g)))
    mix = tf.nn.softmax(tf.stack(tf.split(mix, 2, axis=3)), axis=0)
    return tf.reduce_sum(streams * mix, 0)


class ResidualBlock(tf.Module):

  def __init__(self, f, cin, filters, strides, use_projection, sk_ratio):
    super().__init__()
    self.shortcut_layers = (_shortcut(f, cin, filters, strides, sk_ratio > 0)
                            if use_projection else [])
    self.conv2d_bn_layers = [
        Conv2dFixedPadding(f, cin, filters, 3, strides), BatchNormRelu(f, filters),
        Conv2dFixedPadding(f, filters, filters, 3, 1),
        BatchNormRelu(f, filters, relu=False, zero_gamma=True)]

  def __call__(self, x):
    return tf.nn.relu(_sequential(self.conv2d_bn_layers, x) + _sequential(self.shortcut_layers, x))


class BottleneckBlock(tf.Module):

  def __init__(self, f, cin, filters, strides, use_projection, sk_ratio):
    super().__init__()
    out = 4 * filters
    self.projection_layers = (_shortcut(f, cin, out, strides, sk_ratio > 0)
                              if use_projection else [])
    self.shortcut_dropblock = NoVariables(lambda x: x)
    drop = lambda: NoVariables(lambda x: x)  # DropBlock is the identity in inference.
    layers = [Conv2dFixedPadding(f, cin, filters, 1, 1), BatchNormRelu(f, filters), drop()]
    if sk_ratio > 0:
      layers.append(SKConv2D(f, filters, filters, strides, sk_ratio))
    else:
      layers += [Conv2dFixedPadding(f, filters, filters, 3, strides), BatchNormRelu(f, filters)]
    layers += [drop(), Conv2dFixedPadding(f, filters, out, 1, 1),
               BatchNormRelu(f, out, relu=False, zero_gamma=True), drop()]
    self.conv_relu_dropblock_layers = layers

  def __call__(self, x):
    return tf.nn.relu(_sequential(self.conv_relu_dropblock_layers, x)
                      + _sequential(self.projection_layers, x))


class BlockGroup(tf.Module):

  def __init__(self, f, cin, filters, block, blocks, strides, sk_ratio):
    super().__init__()
    expansion = 4 if block is BottleneckBlock else 1
    self.layers = [block(f, cin, filters, strides, True, sk_ratio)]
    for _ in range(1, blocks):
      self.layers.append(block(f, filters * expansion, filters, 1, False, sk_ratio))

  def __call__(self, x):
    return _sequential(self.layers, x)


LAYERS = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3],
          101: [3, 4, 23, 3], 152: [3, 8, 36, 3], 200: [3, 24, 36, 3]}


class Resnet(tf.Module):

  def __init__(self, f, depth, width, sk_ratio, cifar_stem):
    super().__init__()
    block = ResidualBlock if depth < 50 else BottleneckBlock
    c = int(64 * width)
    identity = lambda: NoVariables(lambda x: x)
    if cifar_stem:
      self.initial_conv_relu_max_pool = [Conv2dFixedPadding(f, 3, c, 3, 1), identity(),
                                         BatchNormRelu(f, c), identity()]
    else:
      if sk_ratio > 0:
        stem = [Conv2dFixedPadding(f, 3, c // 2, 3, 2), BatchNormRelu(f, c // 2),
                Conv2dFixedPadding(f, c // 2, c // 2, 3, 1), BatchNormRelu(f, c // 2),
                Conv2dFixedPadding(f, c // 2, c, 3, 1)]
      else:
        stem = [Conv2dFixedPadding(f, 3, c, 7, 2)]
      self.initial_conv_relu_max_pool = stem + [
          identity(), BatchNormRelu(f, c),
          NoVariables(lambda x: tf.nn.max_pool2d(x, 3, 2, 'SAME')), identity()]
    expansion = 4 if block is BottleneckBlock else 1
    self.block_groups = []
    cin = c
    for g, (blocks, base) in enumerate(zip(LAYERS[depth], (64, 128, 256, 512))):
      filters = int(base * width)
      self.block_groups.append(BlockGroup(f, cin, filters, block, blocks, 1 if g == 0 else 2,
                                          sk_ratio))
      cin = filters * expansion
    self.out_dim = cin

  def __call__(self, x):
    x = _sequential(self.initial_conv_relu_max_pool, x)
    x = _sequential(self.block_groups, x)
    return tf.reduce_mean(x, [1, 2])


class Dense(tf.Module):

  def __init__(self, f, cin, cout, use_bias, name):
    super().__init__()
    self.kernel = f.make(f'{name}/kernel', (cin, cout),
                         lambda r, s: r.normal(0, 1 / np.sqrt(cin), s))
    if use_bias:
      self.bias = f.make(f'{name}/bias', (cout,), lambda r, s: r.normal(0, 0.1, s))

  def __call__(self, x):
    y = tf.matmul(x, _f64(self.kernel))
    return y + _f64(self.bias) if hasattr(self, 'bias') else y


class LinearLayer(tf.Module):
  """Dense (+ BN); with BN the Dense has no bias and the BN is centred iff use_bias."""

  def __init__(self, f, cin, cout, use_bias, use_bn, scope):
    super().__init__()
    self.dense = Dense(f, cin, cout, use_bias and not use_bn, f'{scope}/dense')
    if use_bn:
      self.bn_relu = BatchNormRelu(f, cout, relu=False, center=use_bias,
                                   name=f'{scope}/batch_normalization')

  def __call__(self, x):
    x = self.dense(x)
    return self.bn_relu(x) if hasattr(self, 'bn_relu') else x


class ProjectionHead(tf.Module):

  def __init__(self, f, dim, num_layers, out_dim):
    super().__init__()
    self.linear_layers = []
    for j in range(num_layers):
      last = j == num_layers - 1
      self.linear_layers.append(LinearLayer(f, dim, out_dim if last else dim, not last, True,
                                            f'head_contrastive/nl_{j}'))

  def __call__(self, h):
    hiddens = [h]
    for j, layer in enumerate(self.linear_layers):
      x = layer(hiddens[-1])
      hiddens.append(x if j == len(self.linear_layers) - 1 else tf.nn.relu(x))
    return hiddens


class SupervisedHead(tf.Module):

  def __init__(self, f, cin, num_classes):
    super().__init__()
    self.linear_layer = LinearLayer(f, cin, num_classes, True, False,
                                    'head_supervised/linear_layer')

  def __call__(self, x):
    return self.linear_layer(x)


class Model(tf.Module):
  """The official model: resnet_model, _projection_head, supervised_head (if num_classes)."""

  def __init__(self, f, depth, width, sk_ratio=0.0, cifar_stem=False, proj_layers=3,
               proj_out_dim=128, num_classes=0, ft_proj_selector=0):
    super().__init__()
    self.resnet_model = Resnet(f, depth, width, sk_ratio, cifar_stem)
    dim = self.resnet_model.out_dim
    self._projection_head = ProjectionHead(f, dim, proj_layers, proj_out_dim)
    self.ft_proj_selector = ft_proj_selector
    if num_classes:
      head_in = proj_out_dim if ft_proj_selector == proj_layers and proj_layers else dim
      self.supervised_head = SupervisedHead(f, head_in, num_classes)

  def __call__(self, images):
    """images float [B, H, W, 3] -> dict of float64 numpy outputs."""
    h = self.resnet_model(tf.constant(images, tf.float64))
    hiddens = self._projection_head(h)
    out = {'features': h.numpy(), 'projection': hiddens[-1].numpy()}
    if hasattr(self, 'supervised_head'):
      out['sup_logits'] = self.supervised_head(hiddens[self.ft_proj_selector]).numpy()
    return out


def tf2_variables(model):
  """{object path under the model: variable}, walked like the checkpoint's object graph."""
  # pylint: disable-next=protected-access
  found = model._flatten(predicate=lambda v: isinstance(v, (tf.Variable, Shape)), with_path=True)
  return {'/'.join(str(p) for p in path): v for path, v in found}


def save_tf1(prefix, named):
  """Writes {name: array} as a TF1-style checkpoint (plain names, no object graph)."""
  names = sorted(named)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[''] * len(names),
                    tensors=[tf.constant(named[n]) for n in names])
  return prefix
