"""Tests of simclr_jax.data.input_pipeline on the embedded set and on a real on-disk TFDS data set.

The TFDS data set is built offline by a small GeneratorBasedBuilder (`SimclrTinyShapes` in
tests/tiny_tfds.py; conftest's `tfds_dir` fixture) with download_and_prepare() into a temporary data_dir: the same
TFRecord + dataset_info.json format that `tfds build cifar10` writes, read back through
tfds.builder(name, data_dir=...). Its images have varying sizes and carry their own identity:
red = 4 * id + 1 and green = 40 * label + 3 everywhere (blue is texture), and bicubic resizing
keeps a constant channel constant, so every output view names the example it came from.

References: the generator's own list of (id, label, size); embedded.load() for the MNIST set
(examples identified by their bytes); the uninterrupted stream for resume; the TFDS split sizes.
"""

import functools
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import default
from simclr_jax.data import embedded
from simclr_jax.data import input_pipeline

import tiny_tfds  # pylint: disable=g-bad-import-order
from tiny_tfds import N_CLASSES, N_TEST, N_TRAIN  # pylint: disable=g-bad-import-order


def _config(dataset='embedded_mnist', data_dir=None, *, batch=8, size=8, aug=True, seed=0):
  c = default.get_config()
  c.seed = seed
  c.data.dataset = dataset
  if data_dir:
    c.data.data_dir = data_dir
  c.data.image_size = size
  c.train.batch_size = batch
  if not aug:
    c.aug.crop = False
    c.aug.flip = False
    c.aug.color_jitter_strength = 0.0
    c.aug.use_blur = False
  else:
    c.aug.flip = True
    c.aug.use_blur = True
  return c


def _take(ds, k):
  return list(ds.take(k).as_numpy_iterator())


# ---- get_info ----


def test_get_info_tfds_and_embedded(tfds_dir):
  info = input_pipeline.get_info(_config('simclr_tiny_shapes', tfds_dir))
  assert (info.num_train, info.num_eval, info.num_classes) == (N_TRAIN, N_TEST, N_CLASSES)
  info = input_pipeline.get_info(_config())
  assert (info.num_train, info.num_eval, info.num_classes) == (4000, 1000, 10)


# ---- shapes and dtypes ----


@pytest.mark.parametrize('source', ['embedded', 'tfds'])
def test_train_batch_shapes_and_dtypes(source, tfds_dir):
  c = _config() if source == 'embedded' else _config('simclr_tiny_shapes', tfds_dir)
  ds = input_pipeline.train_dataset(c, process_index=0, process_count=2)
  spec = ds.element_spec
  assert spec['views'].shape.as_list() == [4, 2, 8, 8, 3] and spec['views'].dtype == tf.uint8
  assert spec['label'].shape.as_list() == [4] and spec['label'].dtype == tf.int32
  batch = next(ds.as_numpy_iterator())
  assert batch['views'].shape == (4, 2, 8, 8, 3) and batch['views'].dtype == np.uint8
  assert batch['label'].shape == (4,) and batch['label'].dtype == np.int32
  assert not np.array_equal(batch['views'][:, 0], batch['views'][:, 1])  # Two different views.


# ---- multi-host: disjoint shares that cover the split ----


def _first_epoch(c, pi, pc):
  """This process's first epoch (its whole share, in stream order): views [n, 2, ...], labels."""
  b = c.train.batch_size // pc
  _, n, _ = input_pipeline.source(c, c.data.train_split, pi, pc)
  batches = _take(input_pipeline.train_dataset(c, process_index=pi, process_count=pc), -(-n // b))
  views = np.concatenate([x['views'] for x in batches])[:n]
  labels = np.concatenate([x['label'] for x in batches])[:n]
  return views, labels


@pytest.mark.parametrize('pc', [2, 5])
def test_tfds_process_shares_disjoint_and_cover(tfds_dir, pc):
  c = _config('simclr_tiny_shapes', tfds_dir, batch=pc * 4, aug=False)
  seen = []
  for pi in range(pc):
    views, labels = _first_epoch(c, pi, pc)
    ids = tiny_tfds.ids_of(views)
    np.testing.assert_array_equal(ids[:, 0], ids[:, 1])
    np.testing.assert_array_equal(labels, ids[:, 0] % N_CLASSES)  # Label travels with its image.
    assert len(set(ids[:, 0])) == len(ids), 'no example twice within one epoch of one process'
    lo, hi = N_TRAIN * pi // pc, N_TRAIN * (pi + 1) // pc
    assert len(ids) == hi - lo
    seen.append(set(ids[:, 0]))
  assert sum(len(s) for s in seen) == N_TRAIN
  assert set().union(*seen) == set(range(N_TRAIN))  # Disjoint (sizes add up) and complete.


@functools.lru_cache(maxsize=None)
def _mnist_keys(split):
  images, labels = embedded.load(split)
  keys = [x.tobytes() for x in images]
  assert len(set(keys)) == len(keys), 'every embedded image is unique, so bytes identify it'
  return {k: i for i, k in enumerate(keys)}, labels


@pytest.mark.parametrize('pc', [3])
def test_embedded_process_shares_disjoint_and_cover(pc):
  c = _config(batch=pc * 100, size=28, aug=False)
  keys, ref_labels = _mnist_keys('train')
  seen = []
  for pi in range(pc):
    views, labels = _first_epoch(c, pi, pc)
    np.testing.assert_array_equal(views[:, 0], views[:, 1])
    idx = np.array([keys[v.tobytes()] for v in views[:, 0]])  # KeyError if an image is altered.
    np.testing.assert_array_equal(labels, ref_labels[idx])
    assert len(set(idx)) == len(idx)
    seen.append(set(idx))
  assert sum(len(s) for s in seen) == 4000 and set().union(*seen) == set(range(4000))


# ---- determinism, seeds, resume ----


def test_same_seed_same_batches_different_seed_different():
  """Same seed -> identical batches, even if TF's global seed changed in between (resume runs in
  a fresh process); another seed or another process -> different examples and views."""
  run = lambda seed, pi=1: _take(input_pipeline.train_dataset(
      _config(seed=seed), process_index=pi, process_count=2), 3)
  a = run(0)
  tf.random.set_seed(1234)
  try:
    b = run(0)
  finally:
    tf.random.set_seed(None)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['views'], y['views'])
    np.testing.assert_array_equal(x['label'], y['label'])
  other = run(1)
  assert not np.array_equal(a[0]['views'], other[0]['views'])
  assert not np.array_equal(a[0]['label'], other[0]['label'])  # Order depends on the seed too.
  p0 = run(0, pi=0)
  assert not np.array_equal(p0[0]['views'], a[0]['views'])


@pytest.mark.parametrize('pi,pc', [(0, 1), (1, 2)])
def test_resume_matches_uninterrupted_stream_across_epochs(tfds_dir, pi, pc):
  b = 8
  c = _config('simclr_tiny_shapes', tfds_dir, batch=b * pc, aug=True)
  n = input_pipeline.source(c, 'train', pi, pc)[1]
  steps = 2 * n // b + 2  # Past the end of the second epoch.
  full = _take(input_pipeline.train_dataset(c, process_index=pi, process_count=pc), steps)
  # The order does not depend on the augmentation: read the ids from the unaugmented stream.
  plain = _config('simclr_tiny_shapes', tfds_dir, batch=b * pc, aug=False)
  plain_batches = _take(input_pipeline.train_dataset(plain, process_index=pi, process_count=pc),
                        steps)
  ids = np.concatenate([tiny_tfds.ids_of(x['views'][:, 0]) for x in plain_batches])
  for x, y in zip(plain_batches, full):
    np.testing.assert_array_equal(x['label'], y['label'])
  # Epochs are permutations of the share, reshuffled between epochs.
  e0, e1 = ids[:n], ids[n:2 * n]
  assert sorted(e0) == sorted(e1) and len(set(e0)) == n and not np.array_equal(e0, e1)
  boundary = n // b  # The batch that straddles the end of epoch 0 (n is not a multiple of b).
  assert n % b
  for k in ((boundary, boundary + 1) if pc == 1 else (boundary + 1,)):
    resumed = _take(input_pipeline.train_dataset(c, process_index=pi, process_count=pc,
                                                 start_step=k), steps - k)
    assert len(resumed) == steps - k
    for j, batch in enumerate(resumed):
      np.testing.assert_array_equal(batch['views'], full[k + j]['views'], err_msg=f'k={k} j={j}')
      np.testing.assert_array_equal(batch['label'], full[k + j]['label'])


# ---- eval_batches: every example exactly once, padding masked ----


@pytest.mark.parametrize('pc,global_batch,pass_num', [(1, 5, True), (2, 6, True), (3, 21, False),
                                                      (3, 21, True), (4, 12, False)])
def test_eval_batches_cover_tfds_split_once(tfds_dir, pc, global_batch, pass_num):
  c = _config('simclr_tiny_shapes', tfds_dir, size=8)
  b = global_batch // pc
  counts, ids = [], []
  for pi in range(pc):
    batches = list(input_pipeline.eval_batches(
        c, 'test', global_batch=global_batch, process_index=pi, process_count=pc,
        num_examples=N_TEST if pass_num else None))
    counts.append(len(batches))
    for x in batches:
      assert x['image'].shape == (b, 8, 8, 3) and x['image'].dtype == np.uint8
      assert x['label'].shape == (b,) and x['mask'].shape == (b,)
      k = int(x['mask'].sum())
      np.testing.assert_array_equal(x['mask'], np.arange(b) < k)  # Real examples first.
      assert np.all(x['image'][k:] == 0) and np.all(x['label'][k:] == 0)
      got = tiny_tfds.ids_of(x['image'][:k])
      np.testing.assert_array_equal(x['label'][:k], got % N_CLASSES)
      ids.extend(got)
  assert len(set(counts)) == 1, f'processes disagree on the batch count: {counts}'
  assert counts[0] == -(-(-(-N_TEST // pc)) // b)
  assert sorted(ids) == list(range(N_TEST))


def test_eval_batches_embedded_cover_once():
  c = _config(size=28)
  keys, ref_labels = _mnist_keys('test')
  seen, counts = [], []
  for pi in range(3):
    batches = list(input_pipeline.eval_batches(c, 'test', global_batch=300, process_index=pi,
                                               process_count=3))
    counts.append(len(batches))
    for x in batches:
      m = x['mask'] > 0
      idx = [keys[v.tobytes()] for v in x['image'][m]]  # 28 px: no crop, resize is the identity.
      np.testing.assert_array_equal(x['label'][m], ref_labels[idx])
      seen.extend(idx)
  assert counts == [4, 4, 4] and sorted(seen) == list(range(1000))


def test_eval_center_crop_on_tfds_images(tfds_dir):
  """Above 32 px the eval view is a centre crop: for a constant red channel it stays constant."""
  c = _config('simclr_tiny_shapes', tfds_dir, size=40)
  x = next(input_pipeline.eval_batches(c, 'test', global_batch=4, process_index=0, process_count=1))
  assert x['image'].shape == (4, 40, 40, 3)
  tiny_tfds.ids_of(x['image'])


# ---- errors ----


def test_missing_dataset_fails_fast_without_download(tmp_path, monkeypatch):
  def no_download(*args, **kwargs):
    raise AssertionError('download_and_prepare must not be called')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', no_download)
  c = _config('cifar10', str(tmp_path))
  for fn in (lambda: input_pipeline.get_info(c),
             lambda: input_pipeline.train_dataset(c, process_index=0, process_count=1),
             lambda: next(input_pipeline.eval_batches(c, 'test', global_batch=8, process_index=0,
                                                      process_count=1))):
    t = time.time()
    with pytest.raises(input_pipeline.DataNotReadyError) as e:
      fn()
    assert time.time() - t < 10
    msg = str(e.value)
    assert 'cifar10' in msg and str(tmp_path) in msg and 'tfds build cifar10' in msg


def test_unknown_dataset_names_config_key(tmp_path):
  c = _config('no_such_dataset_xyz', str(tmp_path))
  with pytest.raises(ValueError, match=r'config\.data\.dataset') as e:
    input_pipeline.get_info(c)
  assert 'no_such_dataset_xyz' in str(e.value)


@pytest.mark.parametrize('source', ['embedded', 'tfds'])
@pytest.mark.parametrize('key', ['train_split', 'eval_split'])
def test_bad_split_names_key_and_allowed(tfds_dir, source, key):
  c = _config() if source == 'embedded' else _config('simclr_tiny_shapes', tfds_dir)
  c.data[key] = 'validation'
  with pytest.raises(ValueError) as e:
    input_pipeline.get_info(c)
  msg = str(e.value)
  assert f'config.data.{key}' in msg and "'validation'" in msg
  assert 'train' in msg and 'test' in msg
  if key == 'train_split':
    with pytest.raises(ValueError, match='allowed'):
      input_pipeline.train_dataset(c, process_index=0, process_count=1)


def test_batch_must_split_over_processes_and_fit_the_share(tfds_dir):
  with pytest.raises(ValueError, match='does not split'):
    input_pipeline.per_process_batch(10, 4)
  c = _config('simclr_tiny_shapes', tfds_dir, batch=2 * 20)
  with pytest.raises(ValueError, match='batch_size'):
    input_pipeline.train_dataset(c, process_index=0, process_count=2)  # 18 < 20 per process.
