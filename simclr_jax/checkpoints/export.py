"""python -m simclr_jax.export --from=WORKDIR --to=FILE.safetensors [--names=torchvision] [--heads]

A workdir's encoder (and with --heads its heads) as plain named float32 arrays in a safetensors
file, plus FILE.json, a sidecar with the architecture, the input convention and the naming
scheme. No TensorFlow is needed (the checkpoint is read by encoder.py).

Names (--names):
- `simclr_jax` (default): `<collection>/<Flax path>`, e.g. `params/encoder/stem_conv/Conv_0/kernel`,
  `batch_stats/encoder/stem_bn/bn/mean`; arrays as Flax holds them (conv kernels HWIO, Dense
  kernels [in, out]). `flax.traverse_util.unflatten_dict(d, sep='/')` gives back the variables.
  --heads adds `params/proj_head/...`, `batch_stats/proj_head/...` and `params/head_supervised/...`.
- `torchvision` (depths 18/34/50/101/152, width 1, no SK): torchvision's ResNet state_dict names
  and layouts (conv OIHW, Linear [out, in], BN weight/bias/running_mean/running_var and
  num_batches_tracked = 0). Without --heads there is no `fc`: set `model.fc = torch.nn.Identity()`
  and the model returns our encoder features. With --heads the supervised head (which must read
  the encoder output, ft_proj_selector 0) becomes `fc`: `torchvision.models.resnet50(
  num_classes=N)`. Loading is strict=True either way.

Where torchvision's ResNet is not the official one, the sidecar's `pytorch_adapt` (also in the
README) is a self-contained PyTorch snippet defining `adapt(model)` that makes it so:
- the stem max pool: TF 'SAME' pads 3x3/2 pooling by (0, 1) on an even input (one more after than
  before), torchvision pads (1, 1): on even stem outputs (224 px -> 112) every pooled window is
  shifted by one pixel. adapt() swaps in a max pool padded as TF's SAME (exact);
- depths 18/34: the official first block of every group has a projection shortcut, torchvision's
  layer1[0] has none: adapt() adds `layer1[0].downsample` (conv1x1 + BN, exported);
- the CIFAR stem (image_size <= 32): a 3x3 stride-1 conv1 and no max pool.
Inputs are RGB in [0, 1], not mean/std normalised, as the SimCLR models were trained.
"""

import json
from typing import Any, Optional

from etils import epath
from flax import traverse_util
import jax
import numpy as np

from simclr_jax import cli as cli_lib
from simclr_jax.checkpoints import encoder
from simclr_jax.models import resnet

NAMES = ('simclr_jax', 'torchvision')
TORCHVISION_DEPTHS = (18, 34, 50, 101, 152)
PIXELS = ('RGB float32 in [0, 1], NHWC for simclr_jax / NCHW for torchvision; no mean/std '
          'normalisation')

# The PyTorch side of the differences listed in the module doc; `{...}` fields are filled per
# export. Standalone (torch only), so it can be pasted; tests/test_export.py runs it as written.
PYTORCH_ADAPT = '''import torch
import torch.nn.functional as F


class MaxPoolTFSame(torch.nn.Module):
  """3x3 stride-2 max pool padded as TensorFlow's 'SAME' (the extra pixel goes after)."""

  def forward(self, x):
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
      total = max((-(-size // 2) - 1) * 2 + 3 - size, 0)
      pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float('-inf')), 3, 2)


def adapt(model):
  """Makes a torchvision ResNet compute the official SimCLR network of this export."""
  if {cifar_stem}:  # CIFAR stem: 3x3 stride-1 conv, no max pool.
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
  else:
    model.maxpool = MaxPoolTFSame()
  if {basic_blocks}:  # Official: a projection shortcut in the first block of every group.
    model.layer1[0].downsample = torch.nn.Sequential(
        torch.nn.Conv2d(64, 64, 1, 1, bias=False), torch.nn.BatchNorm2d(64))
  if not {has_fc}:  # No head exported: the model returns the encoder features.
    model.fc = torch.nn.Identity()
  return model
'''


class ExportError(ValueError):
  """The workdir's model cannot be written with the requested names."""


def sidecar_path(file: str) -> str:
  return (file[:-len('.safetensors')] if file.endswith('.safetensors') else file) + '.json'


def architecture(enc: encoder.Encoder) -> dict[str, Any]:
  m = enc.config.model
  params = enc.variables['params']
  return {
      'resnet_depth': int(m.resnet_depth), 'width_multiplier': float(m.width_multiplier),
      'sk_ratio': float(m.sk_ratio), 'cifar_stem': enc.image_size <= 32,
      'feature_dim': resnet.feature_dim(m.resnet_depth, m.width_multiplier),
      'proj_head_mode': m.proj_head_mode, 'proj_out_dim': int(m.proj_out_dim),
      'num_proj_layers': int(m.num_proj_layers), 'ft_proj_selector': int(m.ft_proj_selector),
      'num_classes': encoder.num_classes(params), 'bn_epsilon': resnet.BN_EPSILON,
  }


def simclr_jax_tensors(variables: dict, heads: bool) -> dict[str, np.ndarray]:
  out = {}
  for collection, tree in variables.items():
    for path, v in traverse_util.flatten_dict(tree).items():
      if heads or path[0] == 'encoder':
        out['/'.join((collection,) + path)] = np.asarray(v, np.float32)
  return out


def _conv(kernel) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(kernel, np.float32).transpose(3, 2, 0, 1))  # HWIO->OIHW


def torchvision_tensors(variables: dict, arch: dict, heads: bool) -> dict[str, np.ndarray]:
  """torchvision ResNet state_dict entries (see module doc)."""
  depth, w, sk = arch['resnet_depth'], arch['width_multiplier'], arch['sk_ratio']
  if depth not in TORCHVISION_DEPTHS or int(64 * w) != 64 or sk > 0:
    raise ExportError(f'--names=torchvision needs depth in {TORCHVISION_DEPTHS}, width 1 and no '
                      f'SK; this model is ResNet-{depth} {w:g}x, sk_ratio {sk:g}. Use the '
                      'default names.')
  params, stats = variables['params']['encoder'], variables['batch_stats']['encoder']
  out = {}

  def conv(name, ours):
    out[f'{name}.weight'] = _conv(params[ours]['Conv_0']['kernel'])

  def bn(name, ours):
    p, s = params[ours]['bn'], stats[ours]['bn']
    for theirs, value in (('weight', p['scale']), ('bias', p['bias']),
                          ('running_mean', s['mean']), ('running_var', s['var'])):
      out[f'{name}.{theirs}'] = np.asarray(value, np.float32)
    out[f'{name}.num_batches_tracked'] = np.zeros((), np.int64)

  conv('conv1', 'stem_conv')
  bn('bn1', 'stem_bn')
  convs = 3 if resnet.uses_bottleneck(depth) else 2
  for g, n in enumerate(resnet.BLOCKS_PER_GROUP[depth]):
    for b in range(n):
      ours, theirs = f'group{g + 1}_block{b}', f'layer{g + 1}.{b}'
      for i in range(1, convs + 1):
        out[f'{theirs}.conv{i}.weight'] = _conv(params[ours][f'conv{i}']['Conv_0']['kernel'])
        p, s = params[ours][f'bn{i}']['bn'], stats[ours][f'bn{i}']['bn']
        out.update({f'{theirs}.bn{i}.weight': np.asarray(p['scale'], np.float32),
                    f'{theirs}.bn{i}.bias': np.asarray(p['bias'], np.float32),
                    f'{theirs}.bn{i}.running_mean': np.asarray(s['mean'], np.float32),
                    f'{theirs}.bn{i}.running_var': np.asarray(s['var'], np.float32),
                    f'{theirs}.bn{i}.num_batches_tracked': np.zeros((), np.int64)})
      if b == 0:
        out[f'{theirs}.downsample.0.weight'] = _conv(
            params[ours]['shortcut']['conv']['Conv_0']['kernel'])
        sp, ss = params[ours]['shortcut']['bn']['bn'], stats[ours]['shortcut']['bn']['bn']
        out.update({f'{theirs}.downsample.1.weight': np.asarray(sp['scale'], np.float32),
                    f'{theirs}.downsample.1.bias': np.asarray(sp['bias'], np.float32),
                    f'{theirs}.downsample.1.running_mean': np.asarray(ss['mean'], np.float32),
                    f'{theirs}.downsample.1.running_var': np.asarray(ss['var'], np.float32),
                    f'{theirs}.downsample.1.num_batches_tracked': np.zeros((), np.int64)})
  if heads:
    head = variables['params'].get('head_supervised')
    if head is None or arch['ft_proj_selector'] != 0:
      raise ExportError('--heads with --names=torchvision exports the supervised head as `fc`, '
                        'which needs a head on the encoder output (ft_proj_selector 0); this '
                        'workdir has ' + ('none.' if head is None else
                                          f'one on projection layer {arch["ft_proj_selector"]}.'))
    out['fc.weight'] = np.ascontiguousarray(np.asarray(head['dense']['kernel'], np.float32).T)
    out['fc.bias'] = np.asarray(head['dense']['bias'], np.float32)
  return out


def pytorch_adapt(arch: dict, has_fc: bool) -> str:
  return PYTORCH_ADAPT.format(cifar_stem=arch['cifar_stem'],
                              basic_blocks=not resnet.uses_bottleneck(arch['resnet_depth']),
                              has_fc=has_fc)


def export(path: str, file: str, names: str = 'simclr_jax', heads: bool = False,
           step: Optional[int] = None) -> dict[str, Any]:
  """Writes FILE (safetensors) and its sidecar JSON; returns the sidecar dict."""
  from safetensors import numpy as st  # pylint: disable=g-import-not-at-top
  if names not in NAMES:
    raise ExportError(f'--names={names!r}; allowed: {NAMES}.')
  enc = encoder.load_encoder(path, step)
  variables = jax.tree.map(np.asarray, jax.device_get(enc.variables))
  arch = architecture(enc)
  if names == 'torchvision':
    tensors = torchvision_tensors(variables, arch, heads)
  else:
    tensors = simclr_jax_tensors(variables, heads)
  side = {
      'format': 'simclr_jax export', 'names': names, 'heads': heads,
      'architecture': arch,
      'input': {'image_size': enc.image_size, 'pixels': PIXELS,
                'eval_preprocessing': ('centre crop 0.875 (image_size > 32 only), bicubic '
                                       'resize to image_size, as simclr_jax.load applies it')},
      'source': {'workdir': enc.checkpoint.workdir, 'step': enc.step,
                 'converted_from': (enc.config.converted_from.to_dict()
                                    if 'converted_from' in enc.config else None)},
      'num_tensors': len(tensors),
      'parameters': int(sum(v.size for k, v in tensors.items()
                            if not k.endswith('num_batches_tracked'))),
  }
  if names == 'torchvision':
    depth = arch['resnet_depth']
    side['torchvision'] = {
        'constructor': f'torchvision.models.resnet{depth}('
                       + (f'num_classes={arch["num_classes"]}' if heads else '') + ')',
        'load': 'model.load_state_dict(safetensors.torch.load_file(FILE), strict=True) after '
                'adapt(model)',
        'differences': [
            'stem max pool: TF SAME padding (0, 1) on even sizes vs torchvision (1, 1); '
            'adapt() makes it exact' if not arch['cifar_stem'] else
            'CIFAR stem: 3x3 stride-1 conv1, no max pool (adapt() builds it)'] + (
                ['layer1[0] has a projection shortcut (adapt() adds layer1[0].downsample)']
                if not resnet.uses_bottleneck(depth) else []),
    }
    side['pytorch_adapt'] = pytorch_adapt(arch, heads)
  blob = st.save(tensors, metadata={'simclr_jax': json.dumps(side, sort_keys=True)})
  epath.Path(file).write_bytes(blob)
  epath.Path(sidecar_path(file)).write_text(json.dumps(side, indent=2, sort_keys=True))
  return side


def cli(src: str, file: str, *, names: str = 'simclr_jax', heads: bool = False,
        step: Optional[int] = None) -> int:
  """`python -m simclr_jax.export` (simclr_jax/export.py parses the flags): exports and says
  what was written; returns the exit status (1 with one `error:` line)."""
  try:
    side = export(src, file, names, heads, step)
  except (ExportError, FileNotFoundError, ValueError) as e:
    cli_lib.print_error(f'{e}')
    return 1
  a = side['architecture']
  print(f'Wrote {file} ({side["num_tensors"]} tensors, {side["parameters"] / 1e6:.2f}M '
        f'parameters, {names} names) and {sidecar_path(file)}: ResNet-'
        f'{a["resnet_depth"]} {a["width_multiplier"]:g}x from {side["source"]["workdir"]} step '
        f'{side["source"]["step"]}.')
  return 0
