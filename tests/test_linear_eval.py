"""The standalone linear-evaluation / fine-tuning job on top of a tiny pretraining run.

References: the pretraining checkpoint itself (frozen parts must come back bitwise identical),
the definition of freezing (zero gradients, unchanged BN statistics), the label arithmetic of a
class-balanced subset, and the identity-carrying TFDS set of tests/helpers/tiny_tfds.py (red = 4 id + 1).
"""

import functools
import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10_r18
from configs import cifar10_r50
from configs import default
from configs import imagenet_finetune_10pct
from configs import imagenet_finetune_1pct
from configs import imagenet_linear_eval
from configs import linear_eval as linear_eval_config
from configs import test as test_config
from simclr_jax.evaluators import feature_store
from simclr_jax import linear_eval
from simclr_jax import models
from simclr_jax import sharding
from simclr_jax import train
from simclr_jax import validation
from simclr_jax.data import supervised
import tiny_tfds  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """A 4-step pretraining run of configs/test.py (ResNet-10 x0.125, 16 px, 2-layer head)."""
  workdir = str(tmp_path_factory.mktemp('pretrain'))
  config = test_config.get_config()
  config.train.steps = 4
  config.train.checkpoint_every_steps = 4
  config.eval.baselines = False
  config.eval.probe_steps = 5
  config.eval.embedding_plot_points = 0
  train.train_and_evaluate(config, workdir)
  return workdir


def _job_config(init_checkpoint, mode='linear_eval', **train):
  config = linear_eval_config.get_config()
  config.mode = mode
  config.init_checkpoint = init_checkpoint
  config.train.log_every_seconds = 0.0
  config.eval.batch_size = 1008  # Pads the 1,000 test digits.
  for k, v in train.items():
    config.train[k] = v
  return config


def _restore(workdir, step):
  return linear_eval.restore_pretrained(workdir, step, sharding.make_mesh())


def _bitwise_equal(a, b):
  return jax.tree.all(jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b))


def _changed(a, b):
  return any(jax.tree.leaves(jax.tree.map(
      lambda x, y: not np.array_equal(np.asarray(x), np.asarray(y)), a, b)))


def test_linear_eval_precomputed_end_to_end(pretrained, tmp_path):
  workdir = str(tmp_path / 'linear')
  config = _job_config(pretrained, steps=300)
  config.optim.learning_rate = 0.4  # 4 pretraining steps leave small features: a larger step.
  results = linear_eval.run(config, workdir)
  on_disk = json.loads(open(os.path.join(workdir, 'results.json')).read())
  assert on_disk['top1'] == results['top1']
  assert on_disk['init_checkpoint'] == pretrained and on_disk['init_checkpoint_step'] == 4
  assert on_disk['num_eval'] == 1000  # Every test digit once, padding masked.
  assert on_disk['num_train'] == 4000 and on_disk['steps'] == 300
  assert 0.0 <= on_disk['top1'] <= on_disk['top5'] <= 1.0
  assert on_disk['top1'] > 0.18  # Well above chance (0.1) even after 4 pretraining steps (0.24).
  assert on_disk['final_train_metrics']['supervised_loss'] < np.log(10)
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['300']
  saved = json.loads(open(os.path.join(workdir, 'config.json')).read())
  assert saved['data']['image_size'] == 16  # The architecture is the pretraining run's.
  assert saved['model']['width_multiplier'] == 0.125


def test_linear_eval_with_augmentation_keeps_encoder_bitwise(pretrained, tmp_path):
  """Crop+flip training through the frozen encoder: encoder and projection params AND BN
  statistics come back bitwise identical to the pretraining checkpoint; only the head moved."""
  workdir = str(tmp_path / 'linear_aug')
  config = _job_config(pretrained, steps=3, batch_size=32)
  config.linear_eval.precompute_features = False
  config.zero_init_logits_layer = True
  config.aug.flip = True
  results = linear_eval.run(config, workdir)
  assert results['num_eval'] == 1000
  before, after = _restore(pretrained, 4), _restore(workdir, 3)
  assert set(after['params']) == {'encoder', 'head_supervised'}  # ft_proj_selector 0: no g.
  assert _bitwise_equal(before['params']['encoder'], after['params']['encoder'])
  assert _bitwise_equal(before['batch_stats']['encoder'], after['batch_stats']['encoder'])
  head = after['params']['head_supervised']['dense']
  assert np.any(np.asarray(head['kernel']) != 0)  # Zero-initialised, then trained.
  assert np.any(np.asarray(head['bias']) != 0)


def test_finetune_on_tfds_freezes_up_to_block_and_uses_label_fraction(pretrained, tfds_dir,
                                                                      tmp_path):
  """fine_tune_after_block=2 on an on-disk TFDS set with 60% of the labels and the first
  projection layer kept (ft_proj_selector=1): stem and groups 1-2 unchanged, groups 3-4, g's
  first layer and the head trained (params and BN statistics)."""
  workdir = str(tmp_path / 'finetune')
  config = _job_config(pretrained, mode='finetune', steps=3, batch_size=16)
  config.data.dataset = 'simclr_tiny_shapes'
  config.data.data_dir = tfds_dir
  config.data.label_fraction = 0.6
  config.fine_tune_after_block = 2
  config.model.ft_proj_selector = 1
  config.eval.batch_size = 24
  config.optim.learning_rate = 0.5
  results = linear_eval.run(config, workdir)
  # Classes of 8, 8, 7, 7, 7 examples keep round(0.6 n): 5 + 5 + 4 + 4 + 4.
  assert results['num_train'] == 22
  assert results['num_eval'] == tiny_tfds.N_TEST
  before, after = _restore(pretrained, 4), _restore(workdir, 3)
  for coll in ('params', 'batch_stats'):
    b, a = before[coll]['encoder'], after[coll]['encoder']
    for name in b:
      frozen = name.startswith(('stem', 'group1', 'group2'))
      if frozen:
        assert _bitwise_equal(b[name], a[name]), (coll, name)
      else:
        assert _changed(b[name], a[name]), (coll, name)
    assert set(after[coll]['proj_head']) == {'nl_0'}  # Layers past the selector are dropped.
    assert _changed(before[coll]['proj_head']['nl_0'], after[coll]['proj_head']['nl_0'])


@pytest.fixture(scope='module')
def tiny_encoder():
  base = models.build_encoder(10, 0.125, cifar_stem=True)
  x = jax.random.uniform(jax.random.key(1), (8, 8, 8, 3))
  # Jitted init with the rbg PRNG: eager init of even this tiny net takes ~20 s on CPU.
  init = jax.jit(base.init, static_argnames='train')
  return base, x, init(jax.random.key(0, impl='rbg'), x, train=False)


@pytest.mark.parametrize('k', [0, 3])
def test_fine_tune_after_block_zero_grads_and_frozen_bn(tiny_encoder, k):
  """On a tiny ResNet-10: parts up to block k get exactly zero gradient and keep their BN
  statistics; later parts get gradients and update them. The parameter layout does not depend
  on k (the default -1 is the pretraining layout)."""
  base, x, variables = tiny_encoder
  enc = base.clone(fine_tune_after_block=k)
  shapes = jax.eval_shape(functools.partial(enc.init, train=False), jax.random.key(0), x)
  assert jax.tree.structure(shapes) == jax.tree.structure(variables)

  @jax.jit
  def grads_and_stats(params):
    def loss(p):
      out, new = enc.apply({'params': p, 'batch_stats': variables['batch_stats']}, x,
                           train=True, mutable=['batch_stats'])
      return jnp.sum(out ** 2), new['batch_stats']
    return jax.grad(loss, has_aux=True)(params)

  # Non-zero last-BN gammas, so every block passes gradient to its own parameters.
  params = jax.tree.map(lambda v: v + 0.1, variables['params'])
  grads, stats = grads_and_stats(params)
  for name in variables['params']:
    part = 0 if name.startswith('stem') else int(name[len('group')])
    frozen = part <= k
    g_zero = all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads[name]))
    assert g_zero == frozen, (name, k)
    if name in variables['batch_stats']:
      same = _bitwise_equal(stats[name], variables['batch_stats'][name])
      assert same == frozen, (name, k)


def test_label_subset_is_class_balanced_and_deterministic():
  labels = np.repeat(np.arange(5), [100, 50, 31, 10, 3])
  np.random.RandomState(0).shuffle(labels)
  keep = supervised.label_subset(labels, 0.1)
  counts = np.bincount(labels[keep], minlength=5)
  np.testing.assert_array_equal(counts, [10, 5, 3, 1, 1])  # round(0.1 n), at least 1.
  np.testing.assert_array_equal(keep, supervised.label_subset(labels, 0.1))  # Fixed seed.
  assert np.all(np.diff(keep) > 0)
  np.testing.assert_array_equal(supervised.label_subset(labels, 1.0), np.arange(len(labels)))
  with pytest.raises(ValueError, match='label_fraction'):
    supervised.label_subset(labels, 0.0)
  config = default.get_config()
  labels = feature_store.split_labels(config, 'train', 4000)
  idx = supervised.label_subset(labels, 0.1)
  np.testing.assert_array_equal(np.bincount(labels[idx]), [40] * 10)  # 10% of 400 per class.


@pytest.mark.parametrize('cache', [True, False])
def test_labelled_stream_holds_exactly_the_kept_examples(tfds_dir, tfds_files_dir, cache):
  """In memory (global order) and from files (the kept mask filters records by position)."""
  config = default.get_config()
  config.data.dataset = 'simclr_tiny_shapes'
  config.data.data_dir = tfds_dir if cache else tfds_files_dir
  config.data.cache = cache
  config.data.image_size = 8
  config.data.label_fraction = 0.5
  config.aug.crop = False  # Constant channels stay constant: every view names its example.
  config.train.batch_size = 6
  idx = supervised.label_subset(feature_store.split_labels(config, 'train', tiny_tfds.N_TRAIN), 0.5)
  assert len(idx) == 20  # Classes of 8, 8, 7, 7, 7 keep round(0.5 n) = 4 each.
  ds = supervised.train_dataset(config, process_index=0, process_count=1, indices=idx)
  batches = list(ds.take(3 * 20 // 6).as_numpy_iterator())  # Three epochs.
  ids = np.concatenate([tiny_tfds.ids_of(b['image'])
                        for b in batches])
  labels = np.concatenate([b['label'] for b in batches])
  np.testing.assert_array_equal(labels, ids % tiny_tfds.N_CLASSES)
  assert len(set(ids[:20])) == 20  # Epoch 1 holds each kept example once...
  assert set(ids) == set(ids[:20])  # ...and later epochs the same ones.
  np.testing.assert_array_equal(np.bincount(ids[:20] % 5), [4] * 5)


@pytest.mark.parametrize('make', ['none', 'missing', 'no_checkpoint', 'not_pretrain'])
def test_bad_init_checkpoint_fails_before_compiling(tmp_path, monkeypatch, make):
  src = tmp_path / 'src'
  if make != 'missing':
    src.mkdir()
  if make in ('no_checkpoint', 'not_pretrain'):
    cfg = test_config.get_config()
    if make == 'not_pretrain':
      cfg.mode = 'linear_eval'
    (src / 'config.json').write_text(cfg.to_json())
  config = _job_config(None if make == 'none' else str(src))

  def no_compile(*args, **kwargs):
    raise AssertionError('compiled before checking init_checkpoint')

  monkeypatch.setattr(jax, 'jit', no_compile)
  with pytest.raises(validation.ConfigError, match='init_checkpoint') as e:
    linear_eval.run(config, str(tmp_path / 'out'))
  expected = {'none': 'needs --config.init_checkpoint', 'missing': 'has no config.json',
              'no_checkpoint': 'has no checkpoint', 'not_pretrain': 'pretraining workdir'}
  assert expected[make] in str(e.value)
  assert not (tmp_path / 'out').exists()


def test_cli_dispatches_on_mode_and_reports_missing_checkpoint(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-m', 'simclr_jax.main', '--config=configs/linear_eval.py',
                      f'--config.init_checkpoint={tmp_path}/nope', f'--workdir={tmp_path}/out'],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2, r.stderr[-2000:]
  assert 'init_checkpoint' in r.stderr and 'no config.json' in r.stderr


def test_eval_configs_follow_the_paper():
  for module in (linear_eval_config, imagenet_linear_eval, imagenet_finetune_1pct,
                 imagenet_finetune_10pct, cifar10_r18, cifar10_r50):
    config = module.get_config()
    validation.validate(config, num_devices=8)
    assert module.__doc__ and 'python -m simclr_jax.main' in module.__doc__
  c = imagenet_linear_eval.get_config()
  assert (c.mode, c.optim.optimizer, c.optim.learning_rate, c.train.epochs,
          c.optim.weight_decay, c.optim.warmup_epochs) == ('linear_eval', 'momentum', 0.1, 90,
                                                           0.0, 0.0)
  for module, subset, epochs in ((imagenet_finetune_1pct, '1pct', 60),
                                 (imagenet_finetune_10pct, '10pct', 30)):
    c = module.get_config()
    assert c.mode == 'finetune' and c.data.dataset == f'imagenet2012_subset/{subset}'
    assert (c.optim.learning_rate, c.train.epochs, c.optim.weight_decay) == (0.05, epochs, 0.0)
  for module in (cifar10_r18, cifar10_r50):
    pre, lin = module.get_config('pretrain'), module.get_config()
    validation.validate(pre, num_devices=8)
    assert (pre.mode, lin.mode) == ('pretrain', 'linear_eval')
    assert (lin.optim.learning_rate, lin.train.epochs, lin.optim.weight_decay) == (0.1, 100, 0.0)
  assert cifar10_r50.get_config('pretrain').model.resnet_depth == 50
  assert cifar10_r50.get_config('pretrain').train.batch_size == 1024


@pytest.mark.parametrize('pc', [2, 4])
def test_feature_batches_each_example_once_per_global_batch(pc):
  """precompute_features on P processes: the processes' rows make up the 1-process batch, so
  each step trains on every example of the global batch once (not on P copies of it)."""
  x = np.arange(40, dtype=np.float32)[:, None]
  y = np.arange(40, dtype=np.int32)
  ref = linear_eval.feature_batches(x, y, 8, seed=3, start_step=2)
  parts = [linear_eval.feature_batches(x, y, 8, seed=3, start_step=2, process_index=p,
                                       process_count=pc) for p in range(pc)]
  for _ in range(7):  # Across an epoch boundary (5 batches per epoch).
    want = next(ref)
    got = [next(it) for it in parts]
    assert all(len(g['label']) == 8 // pc for g in got)
    np.testing.assert_array_equal(np.concatenate([g['label'] for g in got]), want['label'])
    assert len(set(want['label'])) == 8


def test_precomputed_features_that_would_not_fit_a_host_are_refused_before_anything_runs():
  """ImageNet's train + val features of a ResNet-50 (1,331,167 x 2048 float32 = 10.9 GB) would
  be gathered to every host: refused with one line; a CIFAR-sized set passes."""
  from simclr_jax.data import sources  # pylint: disable=g-import-not-at-top
  config = imagenet_linear_eval.get_config()
  config.linear_eval.precompute_features = True
  model = linear_eval.build_classifier(config, 1000)
  imagenet = sources.DatasetInfo('imagenet2012', 1_281_167, 50_000, 1000)
  with pytest.raises(validation.ConfigError) as e:
    linear_eval.check_feature_size(config, model, imagenet)
  assert '10.9 GB' in str(e.value) and '1,331,167 examples x 2048' in str(e.value)
  assert 'precompute_features=False' in str(e.value)
  linear_eval.check_feature_size(config, model, sources.DatasetInfo('c', 50_000, 10_000,
                                                                           10))
