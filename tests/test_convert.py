"""simclr_jax.convert: official SimCLR checkpoints (TF2 and TF1 layouts) as simclr_jax models.

Reference: tests/helpers/official_reference.py, an independent TensorFlow re-implementation of the official
model, written from the official code. Its checkpoints carry the official variable names and
random values (BN statistics included); the converted model's features, projections and logits
must equal the reference's within 1e-4 relative, and every official tensor must land exactly once.
The released sizes (depths 50/101/152, widths 1-4, SK) are checked by names and shapes only.
"""

import functools
import json
import os
import subprocess
import sys

from flax import traverse_util
import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from simclr_jax.checkpoints import convert
from simclr_jax import load
from simclr_jax.checkpoints import encoder
from simclr_jax.checkpoints import official_reader
from simclr_jax import models
import official_reference as ref  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOL = 1e-4
# (depth, width, sk) -> encoder parameters in millions: the official README's table (SimCLRv2) and
# the v1 paper's R50 4x.
RELEASED = {(50, 1, False): 24, (50, 1, True): 35, (50, 2, False): 94, (50, 2, True): 140,
            (101, 1, False): 43, (101, 1, True): 65, (101, 2, False): 170, (101, 2, True): 257,
            (152, 1, False): 58, (152, 1, True): 89, (152, 2, False): 233, (152, 2, True): 354,
            (152, 3, True): 795, (50, 4, False): 375}
SMALL = {  # name: (Model kwargs, image side). Odd sizes reach the padding corner cases.
    'r18_cifar': (dict(depth=18, width=0.25, cifar_stem=True, proj_layers=2, proj_out_dim=16,
                       num_classes=10), 30),
    'r18_cifar_sk': (dict(depth=18, width=0.25, sk_ratio=0.0625, cifar_stem=True,
                          proj_layers=2, proj_out_dim=16, num_classes=10), 30),
    'r50': (dict(depth=50, width=0.125, proj_layers=3, proj_out_dim=16, num_classes=10), 72),
    'r50_sk': (dict(depth=50, width=0.125, sk_ratio=0.0625, proj_layers=3, proj_out_dim=16,
                    num_classes=10), 72),
}


@functools.lru_cache(maxsize=None)
def _apply(config_json: str, num_classes: int):
  model = models.build_model(ml_collections.ConfigDict(json.loads(config_json)), num_classes)
  return jax.jit(functools.partial(model.apply, train=False))


def ours(config, variables, images):
  classes = encoder.num_classes(variables['params'])
  arch = {k: config[k].to_dict() for k in ('model', 'data', 'train')}  # Not converted_from.
  out = _apply(json.dumps(arch, sort_keys=True), classes)(variables, images)
  return {k: np.asarray(v, np.float64) for k, v in out.items()}


def rel_err(a, b):
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def images(side, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (2, side, side, 3)).astype(np.float32)


def write_tf2(model, directory, step=1234):
  ckpt = tf.train.Checkpoint(model=model, global_step=tf.Variable(step, dtype=tf.int64))
  return ckpt.write(os.path.join(directory, 'ckpt-3'))


def tf1_values(factory, prefix=''):
  return {prefix + name: v.numpy() for name, v in factory.tf1}


def flat_values(variables):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(variables).items()}


def assert_each_tensor_once(model, variables):
  """Every official tensor is in the converted variables exactly once, unchanged, and nothing
  else is (random values are unique, so equality identifies the tensor)."""
  converted = flat_values(variables)
  official = ref.tf2_variables(model)
  assert len(converted) == len(official)
  for name, v in official.items():
    hits = [k for k, c in converted.items() if c.shape == tuple(v.shape)
            and np.array_equal(c, v.numpy())]
    assert len(hits) == 1, (name, hits)


@pytest.fixture(scope='module')
def small(tmp_path_factory):
  """name -> (reference model, factory, TF2 checkpoint prefix) of SMALL, seeded."""
  out = {}
  for i, (name, (kwargs, _)) in enumerate(SMALL.items()):
    f = ref.Factory(seed=i)
    model = ref.Model(f, **kwargs)
    out[name] = (model, f, write_tf2(model, str(tmp_path_factory.mktemp(name))))
  return out


@pytest.mark.parametrize('name', list(SMALL))
def test_tf2_features_equal_the_reference(small, name):
  model, _, prefix = small[name]
  kwargs, side = SMALL[name]
  config, variables = convert.from_official(os.path.dirname(prefix))
  m = config.model
  assert (m.resnet_depth, m.width_multiplier, m.sk_ratio) == (
      kwargs['depth'], kwargs['width'], kwargs.get('sk_ratio', 0.0))
  assert (config.data.image_size <= 32) == kwargs.get('cifar_stem', False)
  assert (m.proj_head_mode, m.num_proj_layers, m.proj_out_dim) == ('nonlinear',
                                                                   kwargs['proj_layers'], 16)
  assert config.converted_from.step == 1234
  assert_each_tensor_once(model, variables)
  x = images(side)
  got, want = ours(config, variables, x), model(x)
  errs = {k: rel_err(got[k], want[k]) for k in want}
  print(f'{name}: relative error vs the reference {errs}')
  assert max(errs.values()) < TOL, errs


def test_tensors_land_where_the_official_names_say(small):
  """Spot checks written out by hand (the layout module is not consulted)."""
  model, _, prefix = small['r50_sk']
  _, variables = convert.from_official(prefix)
  official = ref.tf2_variables(model)
  got = flat_values(variables)
  blocks = 'resnet_model/block_groups'
  for theirs, mine in [
      ('resnet_model/initial_conv_relu_max_pool/0/conv2d/kernel',
       ('params', 'encoder', 'stem_conv1', 'Conv_0', 'kernel')),
      ('resnet_model/initial_conv_relu_max_pool/6/bn/moving_mean',
       ('batch_stats', 'encoder', 'stem_bn3', 'bn', 'mean')),
      (f'{blocks}/1/layers/0/projection_layers/2/conv2d/kernel',
       ('params', 'encoder', 'group2_block0', 'shortcut', 'conv', 'Conv_0', 'kernel')),
      (f'{blocks}/0/layers/0/projection_layers/2/bn/beta',
       ('params', 'encoder', 'group1_block0', 'shortcut', 'bn', 'bn', 'bias')),
      (f'{blocks}/2/layers/3/conv_relu_dropblock_layers/3/conv2d_0/kernel',
       ('params', 'encoder', 'group3_block3', 'sk_conv2', 'fc_reduce', 'Conv_0', 'kernel')),
      (f'{blocks}/2/layers/3/conv_relu_dropblock_layers/3/batch_norm_relu_1/bn/moving_variance',
       ('batch_stats', 'encoder', 'group3_block3', 'sk_conv2', 'bn_reduce', 'bn', 'var')),
      (f'{blocks}/3/layers/2/conv_relu_dropblock_layers/6/bn/gamma',
       ('params', 'encoder', 'group4_block2', 'bn3', 'bn', 'scale')),
      ('_projection_head/linear_layers/2/bn_relu/bn/gamma',
       ('params', 'proj_head', 'nl_2', 'bn_relu', 'bn', 'scale')),
      ('supervised_head/linear_layer/dense/bias', ('params', 'head_supervised', 'dense', 'bias')),
  ]:
    np.testing.assert_array_equal(got[mine], official[theirs].numpy(), err_msg=theirs)
  assert ('params', 'proj_head', 'nl_2', 'bn_relu', 'bn', 'bias') not in got  # No centre.


def test_tf1_layout_and_ema(small, tmp_path):
  """TF1 names (creation-order numbering), Momentum slots, global_step and an EMA copy."""
  model, f, _ = small['r50_sk']
  kwargs, side = SMALL['r50_sk']
  ema_f = ref.Factory(seed=99)
  ema_model = ref.Model(ema_f, **kwargs)
  named = tf1_values(f)
  named.update({k: v for k, v in tf1_values(ema_f, 'ema_model/').items()
                if 'head_supervised' not in k})
  named.update({f'{k}/Momentum': np.zeros_like(v) for k, v in tf1_values(f).items()})
  named['global_step'] = np.int64(250228)
  prefix = ref.save_tf1(str(tmp_path / 'model.ckpt-250228'), named)
  x = images(side)
  config, variables = convert.from_official(prefix)
  assert config.converted_from.format == 'tf1' and config.converted_from.step == 250228
  assert config.model.sk_ratio == 0.0625 and config.model.resnet_depth == 50
  assert_each_tensor_once(model, variables)
  got, want = ours(config, variables, x), model(x)
  assert max(rel_err(got[k], want[k]) for k in want) < TOL
  config, variables = convert.from_official(str(tmp_path), ema=True)
  got, want = ours(config, variables, x), ema_model(x)
  errs = {k: rel_err(got[k], want[k]) for k in ('features', 'projection')}
  print(f'tf1 ema: relative error vs the reference {errs}')
  assert max(errs.values()) < TOL


def test_tf1_linear_head_without_supervised_head(small, tmp_path):
  """TF1 'linear' projection mode (scope l_0) and no supervised head: ProjectionHead 'linear'."""
  model, f, _ = small['r18_cifar']
  named = {k: v for k, v in tf1_values(f).items() if k.startswith('base_model/')}
  rng = np.random.default_rng(5)
  dim = model.resnet_model.out_dim
  named['head_contrastive/l_0/dense/kernel'] = rng.normal(0, 0.1, (dim, 8)).astype(np.float32)
  for v in ('gamma', 'moving_mean', 'moving_variance'):
    named[f'head_contrastive/l_0/batch_normalization/{v}'] = rng.uniform(0.5, 1.5, 8).astype(
        np.float32)
  prefix = ref.save_tf1(str(tmp_path / 'model.ckpt-7'), named)
  with pytest.raises(convert.ConversionError, match='sk_ratio'):  # TF1 names cannot show it.
    convert.from_official(prefix)
  with pytest.raises(convert.ConversionError, match='no EMA copy'):
    convert.from_official(prefix, sk_ratio=0.0, ema=True)
  config, variables = convert.from_official(prefix, sk_ratio=0.0)
  assert (config.model.proj_head_mode, config.model.proj_out_dim) == ('linear', 8)
  assert not config.train.lineareval_while_pretraining and config.converted_from.step == 7
  x = images(SMALL['r18_cifar'][1])
  got = ours(config, variables, x)
  h = model(x)['features']
  z = h @ named['head_contrastive/l_0/dense/kernel']
  bn = lambda v: named[f'head_contrastive/l_0/batch_normalization/{v}'].astype(np.float64)
  z = (z - bn('moving_mean')) / np.sqrt(bn('moving_variance') + 1e-5) * bn('gamma')
  assert rel_err(got['features'], h) < TOL and rel_err(got['projection'], z) < TOL


def test_saved_model_aliases_resolve(small, tmp_path):
  """A SavedModel whose trainable variables are also listed at the root (as tf2/run.py exports
  it) keys them `trainable_variables_list/N/...`; the object graph still finds them."""
  model, _, prefix = small['r18_cifar']
  root = tf.Module()
  root.model = model
  root.trainable_variables_list = [v for k, v in sorted(ref.tf2_variables(model).items())
                                   if 'moving_' not in k]
  tf.saved_model.save(root, str(tmp_path / 'saved_model' / '5000'))
  keys = tf.train.load_checkpoint(str(
      tmp_path / 'saved_model' / '5000' / 'variables' / 'variables')).get_variable_to_shape_map()
  assert any(k.startswith('trainable_variables_list/') for k in keys)
  config, variables = convert.from_official(str(tmp_path / 'saved_model' / '5000'))
  _, want = convert.from_official(prefix)
  assert config.converted_from.step == 5000
  jax.tree.map(np.testing.assert_array_equal, variables, want)


def test_unknown_and_missing_variables_are_refused(small, tmp_path):
  model, f, _ = small['r18_cifar']
  model.resnet_model.extra = tf.Variable(np.ones(3, np.float32))
  try:
    prefix = write_tf2(model, str(tmp_path / 'extra'))
  finally:
    del model.resnet_model.extra
  with pytest.raises(convert.ConversionError, match=r'resnet_model/extra/\.ATTRIBUTES'):
    convert.from_official(prefix)
  workdir = str(tmp_path / 'out')
  assert convert.cli(prefix, workdir) == 1
  assert not os.path.exists(workdir) and os.listdir(tmp_path) == ['extra']
  # Deliberately skipped, it converts (and says how many were skipped).
  config, _ = convert.from_official(prefix, skip='resnet_model/extra/')
  assert config.converted_from.skipped == 3  # The extra, global_step, the object graph.

  named = tf1_values(f)
  del named['base_model/batch_normalization_5/moving_variance']
  named['head_contrastive/nl_0/dense/mystery'] = np.zeros(2, np.float32)
  with pytest.raises(convert.ConversionError) as e:
    convert.from_official(ref.save_tf1(str(tmp_path / 'model.ckpt-1'), named))
  assert 'base_model/batch_normalization_5/moving_variance' in str(e.value)
  assert 'head_contrastive/nl_0/dense/mystery' in str(e.value)


def test_selector_must_fit_the_supervised_head(small):
  _, _, prefix = small['r18_cifar']
  with pytest.raises(convert.ConversionError, match='ft_proj_selector'):
    convert.from_official(prefix, ft_proj_selector=2)  # The head reads 128-d h, not 16-d z.
  with pytest.raises(convert.ConversionError, match='allowed 0..2'):
    convert.from_official(prefix, ft_proj_selector=3)


def test_skip_patterns():
  slot = ('model/resnet_model/block_groups/0/layers/0/conv2d_bn_layers/0/conv2d/kernel/'
          '.OPTIMIZER_SLOT/optimizer/Momentum/.ATTRIBUTES/VARIABLE_VALUE')
  for k in (slot, 'optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE', 'save_counter/.ATTRIBUTES/'
            'VARIABLE_VALUE', 'global_step/.ATTRIBUTES/VARIABLE_VALUE', official_reader.OBJECT_GRAPH):
    assert official_reader.TF2_SKIP.search(k), k
  assert not official_reader.TF2_SKIP.search('model/resnet_model/x/kernel/.ATTRIBUTES/VARIABLE_VALUE')
  for k in ('global_step', 'base_model/conv2d/kernel/Momentum', 'beta1_power'):
    assert official_reader.TF1_SKIP.search(k), k
  assert not official_reader.TF1_SKIP.search('base_model/conv2d_12/kernel')


def _shape_source(model, factory, fmt):
  """A Source that has names and shapes only (nothing allocated)."""
  if fmt == 'tf2':
    shapes = {f'model/{k}{official_reader.TF2_SUFFIX}': v.shape
              for k, v in ref.tf2_variables(model).items()}
    resolve = lambda n: (f'model/{n}{official_reader.TF2_SUFFIX}'
                         if f'model/{n}{official_reader.TF2_SUFFIX}' in shapes else None)
  else:
    shapes = {k: v.shape for k, v in factory.tf1}
    resolve = lambda n: n if n in shapes else None
  return official_reader.Source('shapes-only', fmt, resolve, set(shapes), [], shapes, None, 0)


@pytest.mark.parametrize('depth,width,sk', sorted(RELEASED))
def test_released_sizes_by_shape(depth, width, sk):
  """Names, shapes and encoder parameter counts of every released size, in both layouts (TF1
  for the smallest and largest only); the v2 releases have a 3-layer head and 1000 classes."""
  f = ref.Factory()
  v1 = width == 4
  model = ref.Model(f, depth, width, sk_ratio=0.0625 if sk else 0.0, proj_layers=0 if v1 else 3,
                    num_classes=1000)
  for fmt in ('tf2', 'tf1') if (depth, width) in ((50, 1), (152, 3)) else ('tf2',):
    p = convert.plan(_shape_source(model, f, fmt))
    m = p.config.model
    assert (m.resnet_depth, m.width_multiplier, m.sk_ratio) == (depth, width,
                                                                0.0625 if sk else 0.0)
    assert m.proj_head_mode == ('none' if v1 else 'nonlinear') and p.config.data.image_size == 224
    assert len(p.mapping) == len(f.tf1)
  enc = {k: int(np.prod(v.shape)) for k, v in ref.tf2_variables(model).items()
         if k.startswith('resnet_model/')}
  trainable = sum(n for k, n in enc.items() if 'moving_' not in k)
  ours_count = sum(int(np.prod(s)) for (c, path), s in convert.expected_variables(
      p.config, 1000).items() if c == 'params' and path[0] == 'encoder')
  assert ours_count == trainable
  # The v2 table counts every encoder variable (BN moving statistics too); the v1 paper's R50 4x
  # count is the trainable parameters.
  counted = trainable if v1 else sum(enc.values())
  assert round(counted / 1e6) == RELEASED[(depth, width, sk)], counted
  if (depth, width, sk) == (50, 1, False):
    assert trainable == 23_508_032  # Exact (SIMCLR_FACTS).


def test_cli_writes_a_workdir_that_load_and_linear_eval_accept(tmp_path):
  """The command line, then load_encoder and the linear-eval job on the written workdir."""
  from configs import linear_eval as linear_eval_config  # pylint: disable=g-import-not-at-top
  from simclr_jax import linear_eval  # pylint: disable=g-import-not-at-top
  f = ref.Factory(seed=3)
  model = ref.Model(f, 10, 0.125, cifar_stem=True, proj_layers=2, proj_out_dim=16,
                    num_classes=10)
  prefix = write_tf2(model, str(tmp_path / 'official'), step=40)
  workdir = str(tmp_path / 'converted')
  cli = subprocess.run([sys.executable, '-m', 'simclr_jax.convert', f'--from={tmp_path / "official"}',
                        f'--to={workdir}'], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=300)
  assert cli.returncode == 0, cli.stderr[-2000:]
  assert 'Wrote' in cli.stdout
  assert sorted(os.listdir(workdir)) == ['checkpoints', 'config.json']
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['40']
  enc = load.load_encoder(workdir)
  x = (images(32) * 255).round().astype(np.uint8)
  want = model(x.astype(np.float32) / 255)
  assert rel_err(enc.embed(x), want['features']) < TOL
  assert rel_err(enc.project(x), want['projection']) < TOL
  assert rel_err(enc.outputs(x, 'sup_logits'), want['sup_logits']) < TOL
  assert convert.cli(prefix, workdir) == 1  # Never over a workdir.

  config = linear_eval_config.get_config()
  config.init_checkpoint = workdir
  config.train.epochs = 1
  config.train.log_every_seconds = 0.0
  config.eval.batch_size = 1008
  results = linear_eval.run(config, str(tmp_path / 'linear'))
  assert results['init_checkpoint_step'] == 40
