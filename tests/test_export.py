"""simclr_jax.export: safetensors with our names, and with torchvision's names loaded strict=True
into tests/helpers/torch_resnet.py (torchvision's ResNet in plain PyTorch), features compared with ours.

Where the architectures differ (the stem max pool's padding, the first block's shortcut in
ResNet-18/34, the CIFAR stem), the export's `pytorch_adapt` snippet is run as written and must
make the PyTorch model equal ours within 1e-4 relative; without it the max-pool difference is
measured and must show.
"""

import json
import os
import subprocess
import sys

from flax import traverse_util
import jax
import numpy as np
import pytest
from safetensors import numpy as st_numpy
from safetensors import torch as st_torch
import torch

from simclr_jax.checkpoints import convert
from simclr_jax.checkpoints import export
from simclr_jax import models
from simclr_jax.checkpoints import official_layout
import torch_resnet  # pylint: disable=g-bad-import-order

TOL = 1e-4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_variables(config, num_classes, seed=0):
  """Random values for every variable (BN statistics included) in our model's shapes."""
  rng = np.random.default_rng(seed)
  flat = {}
  for (collection, path), shape in sorted(convert.expected_variables(config, num_classes).items()):
    leaf = path[-1]
    if leaf == 'kernel':
      fan_in = int(np.prod(shape[:-1]))
      v = rng.normal(0, np.sqrt((1 if len(shape) == 2 else 2) / fan_in), shape)
    elif leaf == 'scale':
      v = rng.uniform(0.7, 1.3, shape)
    elif leaf == 'var':
      v = rng.uniform(0.5, 2.0, shape)
    else:  # bias, mean
      v = rng.normal(0, 0.2, shape)
    flat[(collection,) + path] = v.astype(np.float32)
  return traverse_util.unflatten_dict(flat)


def make_workdir(path, depth, width=1.0, sk=False, cifar_stem=False, proj_layers=2,
                 num_classes=0, seed=0):
  s = official_layout.Structure(depth, sk, cifar_stem, proj_layers, False, num_classes > 0)
  config = convert.make_config(s, width, 0.0625 if sk else 0.0, 16, 0,
                               {'path': 'random', 'format': 'test', 'step': 7})
  variables = random_variables(config, num_classes, seed)
  convert.write_workdir(str(path), config, variables, 7)
  return config, variables


def ours(config, variables, x):
  model = models.build_model(config, 10 if 'head_supervised' in variables['params'] else 0)
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  return {k: np.asarray(v) for k, v in out.items()}


def torch_features(model, x_nhwc):
  """torchvision forward up to the pooled features, and the logits."""
  x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
  with torch.no_grad():
    y = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    y = model.layer4(model.layer3(model.layer2(model.layer1(y))))
    h = torch.flatten(model.avgpool(y), 1)
    return h.numpy(), model.fc(h).numpy()


def adapt_fn(side):
  scope = {}
  exec(side['pytorch_adapt'], scope)  # pylint: disable=exec-used  # The documented snippet as is.
  return scope['adapt']


def rel_err(a, b):
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def images(side, seed=1):
  return np.random.default_rng(seed).uniform(0, 1, (2, side, side, 3)).astype(np.float32)


def test_torchvision_resnet50_strict_and_equal(tmp_path):
  config, variables = make_workdir(tmp_path / 'wd', 50, num_classes=10)
  file = str(tmp_path / 'r50.safetensors')
  cli = subprocess.run([sys.executable, '-m', 'simclr_jax.export', f'--from={tmp_path / "wd"}',
                        f'--to={file}', '--names=torchvision', '--heads'], cwd=ROOT,
                       capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                       timeout=300)
  assert cli.returncode == 0, cli.stderr[-2000:]
  side = json.loads(open(tmp_path / 'r50.json').read())
  assert side['torchvision']['constructor'] == 'torchvision.models.resnet50(num_classes=10)'
  state = st_torch.load_file(file)
  x = images(64)  # Even stem output (32): where TF's SAME max pool and torchvision's differ.
  want = ours(config, variables, x)

  plain = torch_resnet.resnet(50, num_classes=10).eval()
  plain.load_state_dict(state, strict=True)
  h_plain, _ = torch_features(plain, x)
  model = adapt_fn(side)(torch_resnet.resnet(50, num_classes=10)).eval()
  model.load_state_dict(state, strict=True)
  h, logits = torch_features(model, x)
  errs = {'features': rel_err(h, want['features']), 'logits': rel_err(logits, want['sup_logits']),
          'features, torchvision max pool': rel_err(h_plain, want['features'])}
  print(f'resnet50 64px export vs ours: {errs}')
  assert errs['features'] < TOL and errs['logits'] < TOL
  assert errs['features, torchvision max pool'] > 1e-3  # The padding difference is real.


def test_torchvision_resnet18_cifar_stem(tmp_path):
  config, variables = make_workdir(tmp_path / 'wd', 18, cifar_stem=True, seed=2)
  file = str(tmp_path / 'r18.safetensors')
  side = export.export(str(tmp_path / 'wd'), file, names='torchvision')
  state = st_torch.load_file(file)
  assert 'fc.weight' not in state and 'layer1.0.downsample.0.weight' in state
  with pytest.raises(RuntimeError, match='layer1.0.downsample'):
    torch_resnet.resnet(18).load_state_dict(state, strict=True)  # Needs adapt().
  model = adapt_fn(side)(torch_resnet.resnet(18)).eval()
  model.load_state_dict(state, strict=True)
  x = images(32)
  h, out = torch_features(model, x)
  np.testing.assert_array_equal(h, out)  # fc is the identity.
  err = rel_err(h, ours(config, variables, x)['features'])
  print(f'resnet18 CIFAR stem export vs ours: {err}')
  assert err < TOL


def test_simclr_jax_names_round_trip(tmp_path):
  _, variables = make_workdir(tmp_path / 'wd', 10, width=0.125, sk=True, num_classes=10, seed=3)
  file = str(tmp_path / 'all.safetensors')
  side = export.export(str(tmp_path / 'wd'), file, heads=True)
  got = traverse_util.unflatten_dict(st_numpy.load_file(file), sep='/')
  jax.tree.map(np.testing.assert_array_equal, got, variables)
  a = side['architecture']
  assert (a['resnet_depth'], a['width_multiplier'], a['sk_ratio'], a['num_classes'],
          a['feature_dim']) == (10, 0.125, 0.0625, 10, 64)
  assert side['source']['step'] == 7 and side['names'] == 'simclr_jax'
  export.export(str(tmp_path / 'wd'), file)
  encoder_only = st_numpy.load_file(file)
  assert encoder_only and all(k.split('/')[1] == 'encoder' for k in encoder_only)
  assert export.cli(str(tmp_path / 'wd'), str(tmp_path / 'x.safetensors'),
                    names='torchvision') == 1  # SK and width 0.125: refused.
  assert not os.path.exists(tmp_path / 'x.safetensors')


def test_export_needs_no_tensorflow():
  code = ('import sys; from simclr_jax import export; '
          'print("tensorflow" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       check=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.stdout.strip() == 'False'
