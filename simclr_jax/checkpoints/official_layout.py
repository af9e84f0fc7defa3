"""Where every variable of the official SimCLR checkpoints (google-research/simclr) lives in ours.

Two naming schemes exist for the same network, and both map one to one onto simclr_jax's model:

- TF2 (`tf2/` code, a `tf.train.Checkpoint(model=...)` of its Keras model): object paths under the
  model, from the Python attribute names of its layers; lists are numbered by position, including
  the layers without variables (padding, pooling, identity, DropBlock), e.g.
  `resnet_model/block_groups/0/layers/0/projection_layers/0/conv2d/kernel`. The checkpoint key
  appends `/.ATTRIBUTES/VARIABLE_VALUE` and starts with the root's attribute (`model/`).
- TF1 (root code, `model.ckpt-N`): `tf.layers` names, numbered in creation order inside
  `base_model/` (`conv2d`, `conv2d_1`, ...; `batch_normalization`, `batch_normalization_1`, ...),
  and `head_contrastive/nl_j/...`, `head_supervised/linear_layer/dense/...` for the heads.

Our side: (collection, path) in the Flax variables of models.simclr.SimCLR
(`params`/`batch_stats`, e.g. ('params', ('encoder', 'stem_conv', 'Conv_0', 'kernel'))).
Convolution kernels are HWIO and Dense kernels [in, out] on both sides, so values copy as they are;
BN gamma/beta/moving_mean/moving_variance are scale/bias/mean/var.

Only the structure matters here (depth, SK or not, stem, head layers); widths and the SK ratio come
from the shapes (convert.py), and every shape is checked against our model.
"""

import dataclasses
from typing import Iterator

from simclr_jax.models import resnet

BN_VARIABLES = (('gamma', 'params', 'scale'), ('beta', 'params', 'bias'),
                ('moving_mean', 'batch_stats', 'mean'),
                ('moving_variance', 'batch_stats', 'var'))


@dataclasses.dataclass(frozen=True)
class Structure:
  """What decides the variable names: not widths, not the SK ratio.

  sk: sk_ratio > 0 (ResNet-D stem unless cifar_stem, average-pool shortcuts, SK convs in
  bottlenecks). proj_layers: layers of the projection head in the checkpoint (0: none, as in the
  SimCLRv1 releases). proj_linear: TF1 'linear' head mode (scope `l_0` rather than `nl_0`).
  supervised: the checkpoint has the supervised (linear) head.
  """
  depth: int
  sk: bool
  cifar_stem: bool
  proj_layers: int = 0
  proj_linear: bool = False
  supervised: bool = False


@dataclasses.dataclass(frozen=True)
class Entry:
  """One variable: its TF2 object path (under the model), its TF1 name, and where it goes."""
  tf2: str
  tf1: str
  collection: str
  path: tuple[str, ...]


class _Walker:
  """Emits entries in the official creation order, which TF1 numbering depends on."""

  def __init__(self):
    self.num_conv = 0
    self.num_bn = 0

  @staticmethod
  def _numbered(base: str, k: int) -> str:
    return base if k == 0 else f'{base}_{k}'

  def conv(self, tf2: str, ours: tuple[str, ...]) -> Iterator[Entry]:
    tf1 = f'base_model/{self._numbered("conv2d", self.num_conv)}/kernel'
    self.num_conv += 1
    yield Entry(f'{tf2}/kernel', tf1, 'params', ours + ('Conv_0', 'kernel'))

  def bn(self, tf2: str, ours: tuple[str, ...]) -> Iterator[Entry]:
    tf1 = f'base_model/{self._numbered("batch_normalization", self.num_bn)}'
    self.num_bn += 1
    for name, collection, leaf in BN_VARIABLES:  # Encoder BN layers always have a centre.
      yield Entry(f'{tf2}/{name}', f'{tf1}/{name}', collection, ours + ('bn', leaf))


def _stem(w: _Walker, s: Structure) -> Iterator[Entry]:
  stem = 'resnet_model/initial_conv_relu_max_pool'
  enc = ('encoder',)
  if s.sk and not s.cifar_stem:  # ResNet-D: conv, BN, conv, BN, conv, identity, BN, pool, identity.
    for i, (conv_i, bn_i) in enumerate(((0, 1), (2, 3), (4, 6))):
      yield from w.conv(f'{stem}/{conv_i}/conv2d', enc + (f'stem_conv{i + 1}',))
      yield from w.bn(f'{stem}/{bn_i}/bn', enc + (f'stem_bn{i + 1}',))
  else:  # conv, identity, BN, (pool,) identity.
    yield from w.conv(f'{stem}/0/conv2d', enc + ('stem_conv',))
    yield from w.bn(f'{stem}/2/bn', enc + ('stem_bn',))


def _block(w: _Walker, s: Structure, g: int, b: int) -> Iterator[Entry]:
  tf2 = f'resnet_model/block_groups/{g}/layers/{b}'
  ours = ('encoder', f'group{g + 1}_block{b}')
  bottleneck = resnet.uses_bottleneck(s.depth)
  strides = 2 if g > 0 and b == 0 else 1
  if b == 0:  # Projection shortcut; ResNet-D puts [fixed padding,] average pooling before it.
    short = f'{tf2}/{"projection_layers" if bottleneck else "shortcut_layers"}'
    i = (2 if strides > 1 else 1) if s.sk else 0
    yield from w.conv(f'{short}/{i}/conv2d', ours + ('shortcut', 'conv'))
    yield from w.bn(f'{short}/{i + 1}/bn', ours + ('shortcut', 'bn'))
  if not bottleneck:  # conv, BN, conv, BN.
    layers = f'{tf2}/conv2d_bn_layers'
    yield from w.conv(f'{layers}/0/conv2d', ours + ('conv1',))
    yield from w.bn(f'{layers}/1/bn', ours + ('bn1',))
    yield from w.conv(f'{layers}/2/conv2d', ours + ('conv2',))
    yield from w.bn(f'{layers}/3/bn', ours + ('bn2',))
    return
  # conv, BN, DropBlock, (conv, BN | SK), DropBlock, conv, BN, DropBlock.
  layers = f'{tf2}/conv_relu_dropblock_layers'
  yield from w.conv(f'{layers}/0/conv2d', ours + ('conv1',))
  yield from w.bn(f'{layers}/1/bn', ours + ('bn1',))
  if s.sk:
    sk, sko = f'{layers}/3', ours + ('sk_conv2',)
    yield from w.conv(f'{sk}/conv2d_fixed_padding/conv2d', sko + ('conv',))
    yield from w.bn(f'{sk}/batch_norm_relu/bn', sko + ('bn_conv',))
    yield from w.conv(f'{sk}/conv2d_0', sko + ('fc_reduce',))  # Plain Keras Conv2D layers.
    yield from w.bn(f'{sk}/batch_norm_relu_1/bn', sko + ('bn_reduce',))
    yield from w.conv(f'{sk}/conv2d_1', sko + ('fc_attention',))
    last = 5
  else:
    yield from w.conv(f'{layers}/3/conv2d', ours + ('conv2',))
    yield from w.bn(f'{layers}/4/bn', ours + ('bn2',))
    last = 6
  yield from w.conv(f'{layers}/{last}/conv2d', ours + ('conv3',))
  yield from w.bn(f'{layers}/{last + 1}/bn', ours + ('bn3',))


def _heads(s: Structure) -> Iterator[Entry]:
  for j in range(s.proj_layers):
    tf2 = f'_projection_head/linear_layers/{j}'
    scope = 'l_0' if s.proj_linear else f'nl_{j}'
    tf1 = f'head_contrastive/{scope}'
    ours = ('proj_head', 'linear' if s.proj_linear else f'nl_{j}')
    yield Entry(f'{tf2}/dense/kernel', f'{tf1}/dense/kernel', 'params', ours + ('dense', 'kernel'))
    last = j == s.proj_layers - 1  # The output layer's BN has no centre (beta).
    for name, collection, leaf in BN_VARIABLES:
      if not (last and name == 'beta'):
        yield Entry(f'{tf2}/bn_relu/bn/{name}', f'{tf1}/batch_normalization/{name}', collection,
                    ours + ('bn_relu', 'bn', leaf))
  if s.supervised:
    for leaf in ('kernel', 'bias'):
      yield Entry(f'supervised_head/linear_layer/dense/{leaf}',
                  f'head_supervised/linear_layer/dense/{leaf}', 'params',
                  ('head_supervised', 'dense', leaf))


def entries(s: Structure) -> list[Entry]:
  """Every variable of an official checkpoint of structure `s`, in official creation order."""
  if s.depth not in resnet.BLOCKS_PER_GROUP:
    raise ValueError(f'depth {s.depth} is not one of {sorted(resnet.BLOCKS_PER_GROUP)}.')
  w = _Walker()
  out = list(_stem(w, s))
  for g, n in enumerate(resnet.BLOCKS_PER_GROUP[s.depth]):
    for b in range(n):
      out.extend(_block(w, s, g, b))
  out.extend(_heads(s))
  return out


def encoder_structures() -> Iterator[Structure]:
  """Every encoder structure our model can express (heads left out)."""
  for depth in sorted(resnet.BLOCKS_PER_GROUP):
    for sk in (False, True):
      for cifar_stem in (False, True):
        yield Structure(depth, sk, cifar_stem)
