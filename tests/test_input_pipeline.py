"""Tests of simclr_jax.data.input_pipeline on the embedded set and on a real on-disk TFDS data set.

The TFDS data set is built offline by a small GeneratorBasedBuilder (`SimclrTinyShapes` in
tests/helpers/tiny_tfds.py; conftest's `tfds_dir` fixture) with download_and_prepare() into a temporary data_dir: the same
TFRecord + dataset_info.json format that `tfds build cifar10` writes, read back through
tfds.builder(name, data_dir=...). Its images have varying sizes and carry their own identity:
red = 4 * id + 1 and green = 40 * label + 3 everywhere (blue is texture), and bicubic resizing
keeps a constant channel constant, so every output view names the example it came from.

References: the generator's own list of (id, label, size); embedded.load() for the MNIST set
(examples identified by their bytes); the uninterrupted stream for resume; the TFDS split sizes.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import default
from simclr_jax.data import embedded
from simclr_jax.data import input_pipeline
from simclr_jax.data import sources

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
  info = sources.get_info(_config('simclr_tiny_shapes', tfds_dir))
  assert (info.num_train, info.num_eval, info.num_classes) == (N_TRAIN, N_TEST, N_CLASSES)
  info = sources.get_info(_config())
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


# ---- in-memory splits: one global order, any number of processes ----


@functools.lru_cache(maxsize=None)
def _mnist_keys(split):
  images, labels = embedded.load(split)
  keys = [x.tobytes() for x in images]
  assert len(set(keys)) == len(keys), 'every embedded image is unique, so bytes identify it'
  return {k: i for i, k in enumerate(keys)}, labels


def _global_batches(c, pc, steps, start_step=0):
  """Global batches (rows of processes 0..pc-1 concatenated) of `steps` steps."""
  its = [input_pipeline.train_dataset(c, process_index=p, process_count=pc,
                                      start_step=start_step).as_numpy_iterator()
         for p in range(pc)]
  out = []
  for _ in range(steps):
    parts = [next(it) for it in its]
    out.append({k: np.concatenate([x[k] for x in parts]) for k in ('views', 'label')})
  return out


@pytest.mark.parametrize('source', ['embedded', 'tfds'])
def test_global_batches_bitwise_equal_for_1_2_4_processes(source, tfds_dir):
  """The issue's contract for in-memory splits: the global batch at step t (order AND views)
  does not depend on how many processes read it; also after a resume that changes the count."""
  if source == 'embedded':
    c, steps, counts = _config(batch=1000, size=8), 5, (4,)  # 4000 examples: into epoch 2.
  else:
    c, steps, counts = _config('simclr_tiny_shapes', tfds_dir, batch=8, size=8), 12, (2, 4)
  ref = _global_batches(c, 1, steps)
  for pc in counts:
    got = _global_batches(c, pc, steps)
    for t, (x, y) in enumerate(zip(ref, got)):
      np.testing.assert_array_equal(x['views'], y['views'], err_msg=f'{pc} processes, step {t}')
      np.testing.assert_array_equal(x['label'], y['label'])
  resumed = _global_batches(c, 4, steps - 3, start_step=3)  # Written by 1 process, resumed on 4.
  for x, y in zip(ref[3:], resumed):
    np.testing.assert_array_equal(x['views'], y['views'])


def test_global_order_epochs_are_permutations_reshuffled():
  """Unaugmented embedded digits: each epoch of the global stream holds every image once, in a
  new order; rows of a 3-process run are the same images (identified by their bytes)."""
  c = _config(batch=500, size=28, aug=False)
  keys, ref_labels = _mnist_keys('train')
  batches = _global_batches(c, 2, 16)  # Two epochs of 4000.
  views = np.concatenate([x['views'] for x in batches])
  np.testing.assert_array_equal(views[:, 0], views[:, 1])
  idx = np.array([keys[v.tobytes()] for v in views[:, 0]])  # KeyError if an image is altered.
  np.testing.assert_array_equal(np.concatenate([x['label'] for x in batches]), ref_labels[idx])
  e0, e1 = idx[:4000], idx[4000:]
  assert sorted(e0) == list(range(4000)) and sorted(e1) == list(range(4000))
  assert not np.array_equal(e0, e1)


# ---- file-backed splits: per-process file shards, reshuffled and interleaved ----


def _file_ids(data_dir):
  """{file name: example ids in it} read straight from the tfrecord files (the reference)."""
  builder = tfds.builder(tiny_tfds.NAME, data_dir=data_dir)
  out = {}
  for f in builder.info.splits['train'].file_instructions:
    ids = []
    for rec in tf.data.TFRecordDataset(f.filename).as_numpy_iterator():
      ex = builder.info.features.deserialize_example_np(rec)
      ids.append(int(tiny_tfds.ids_of(ex['image'][None])[0]))
    out[f.filename] = ids
  return out


def _file_config(data_dir, pc, **kw):
  c = _config('simclr_tiny_shapes', data_dir, batch=4 * pc, **kw)
  c.data.cache = False
  c.data.shuffle_buffer = 4  # Far below a process's share: blocks alone would not shuffle.
  return c


def _stream_ids(c, pi, pc, steps, start_step=0):
  it = input_pipeline.train_dataset(c, process_index=pi, process_count=pc,
                                    start_step=start_step).as_numpy_iterator()
  batches = [next(it) for _ in range(steps)]
  if c.aug.crop:  # Augmented views no longer name their example.
    return None, batches
  ids = np.concatenate([tiny_tfds.ids_of(x['views'][:, 0]) for x in batches])
  labels = np.concatenate([x['label'] for x in batches])
  np.testing.assert_array_equal(labels, ids % N_CLASSES)  # Label travels with its image.
  return ids, batches


@pytest.mark.parametrize('pc', [1, 2, 4])
def test_file_shards_disjoint_cover_and_reshuffle_each_epoch(tfds_files_dir, pc):
  files = _file_ids(tfds_files_dir)
  names = sorted(files)
  assert len(names) == 4
  c = _file_config(tfds_files_dir, pc, aug=False)
  seen = []
  for pi in range(pc):
    mine = [files[f] for f in names[pi::pc]]  # File i goes to process i mod P.
    n = sum(len(x) for x in mine)
    ids, _ = _stream_ids(c, pi, pc, -(-6 * n // 4))  # Six epochs of this process.
    epochs = [ids[e * n:(e + 1) * n] for e in range(6)]
    for e in epochs:
      assert sorted(e) == sorted(sum(mine, [])), 'each epoch holds exactly this process\'s files'
    assert len({tuple(e) for e in epochs}) == 6, 'a new order every epoch'
    if pc < 4:  # Several files: the file read first changes between epochs.
      first_file = {next(k for k, x in enumerate(mine) if e[0] in x) for e in epochs}
      assert len(first_file) > 1
    seen.extend(epochs[0])
  assert sorted(seen) == list(range(N_TRAIN))  # Disjoint and complete over the processes.


def test_same_seed_same_batches_different_seed_different(tfds_files_dir):
  """Same seed -> identical batches, even if TF's global seed changed in between (resume runs in
  a fresh process); another seed -> different order and views; file streams differ by process."""
  def run(seed, pi=1):
    c = _file_config(tfds_files_dir, 2, seed=seed)
    return _take(input_pipeline.train_dataset(c, process_index=pi, process_count=2), 3)
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
def test_file_stream_resume_matches_uninterrupted_across_epochs(tfds_files_dir, pi, pc):
  c = _file_config(tfds_files_dir, pc)
  n = sum(len(x) for x in [_file_ids(tfds_files_dir)[f]
                           for f in sorted(_file_ids(tfds_files_dir))[pi::pc]])
  b = 4
  steps = 2 * n // b + 2  # Past the end of the second epoch.
  _, full = _stream_ids(c, pi, pc, steps)
  boundary = n // b  # The batch that straddles the end of epoch 0 (n is not a multiple of b).
  assert n % b
  for k in (boundary, boundary + 1, steps - 2):
    _, resumed = _stream_ids(c, pi, pc, steps - k, start_step=k)
    for j, batch in enumerate(resumed):
      np.testing.assert_array_equal(batch['views'], full[k + j]['views'], err_msg=f'k={k} j={j}')


def test_file_stream_resume_parses_nothing_it_skips(tfds_files_dir):
  """A resume deep into an epoch parses (and so decodes) only what it yields, not what it skips."""
  from simclr_jax.data import streams  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(tiny_tfds.NAME, data_dir=tfds_files_dir)
  calls = []

  def count(x):
    calls.append(1)
    return x

  def parse(rec):
    return {'n': tf.py_function(count, [tf.strings.length(rec)], tf.int32)}

  ds, n = streams.file_stream(builder.info.splits['train'].file_instructions, b=1,
                              process_index=0, process_count=1, start_step=3 * N_TRAIN + 30,
                              salt=0, shuffle_buffer=4, parse=parse)
  assert n == N_TRAIN
  it = iter(ds)
  t, _ = next(it)
  assert int(t) == 3 * N_TRAIN + 30
  assert len(calls) <= 8, f'{len(calls)} records parsed to yield one after skipping 30'


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
  for fn in (lambda: sources.get_info(c),
             lambda: input_pipeline.train_dataset(c, process_index=0, process_count=1),
             lambda: next(input_pipeline.eval_batches(c, 'test', global_batch=8, process_index=0,
                                                      process_count=1))):
    with pytest.raises(sources.DataNotReadyError) as e:  # Before any download (patched above).
      fn()
    msg = str(e.value)
    assert 'cifar10' in msg and str(tmp_path) in msg and 'tfds build cifar10' in msg


def test_unknown_dataset_names_config_key(tmp_path):
  c = _config('no_such_dataset_xyz', str(tmp_path))
  with pytest.raises(ValueError, match=r'config\.data\.dataset') as e:
    sources.get_info(c)
  assert 'no_such_dataset_xyz' in str(e.value)


@pytest.mark.parametrize('source', ['embedded', 'tfds'])
@pytest.mark.parametrize('key', ['train_split', 'eval_split'])
def test_bad_split_names_key_and_allowed(tfds_dir, source, key):
  c = _config() if source == 'embedded' else _config('simclr_tiny_shapes', tfds_dir)
  c.data[key] = 'validation'
  with pytest.raises(ValueError) as e:
    sources.get_info(c)
  msg = str(e.value)
  assert f'config.data.{key}' in msg and "'validation'" in msg
  assert 'train' in msg and 'test' in msg
  if key == 'train_split':
    with pytest.raises(ValueError, match='allowed'):
      input_pipeline.train_dataset(c, process_index=0, process_count=1)


def test_batch_must_split_over_processes_and_fit_the_share(tfds_dir, tfds_files_dir):
  with pytest.raises(ValueError, match='does not split'):
    input_pipeline.per_process_batch(10, 4)
  c = _config('simclr_tiny_shapes', tfds_dir, batch=40)
  with pytest.raises(ValueError, match='batch_size'):
    input_pipeline.train_dataset(c, process_index=0, process_count=2)  # 37 examples < 40.
  c = _file_config(tfds_files_dir, 2)
  c.train.batch_size = 2 * 19
  with pytest.raises(ValueError, match='batch_size'):
    input_pipeline.train_dataset(c, process_index=1, process_count=2)  # 18 in its files < 19.
  c = _file_config(tfds_files_dir, 8)
  with pytest.raises(ValueError, match='data.cache=True'):
    input_pipeline.train_dataset(c, process_index=0, process_count=8)  # 4 files, 8 processes.


# ---- stored order across files, and undecodable records ----


def test_tfds_reads_are_in_stored_order_across_files(tfds_shards_dir):
  """Labels, eval batches and the in-memory copy follow the files' stored order (TFDS's own
  reader interleaves 16 files in blocks of 16 unless told not to): the kNN bank and label
  fractions built on them are exactly class-balanced by the TRUE labels, for 1, 2, 4 processes."""
  from simclr_jax.evaluators import knn  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import supervised  # pylint: disable=g-import-not-at-top
  c = _config(tiny_tfds.SHARDS_NAME, tfds_shards_dir)
  truth = tiny_tfds.stored_labels(tfds_shards_dir, tiny_tfds.SHARDS_NAME, 'probe')
  assert len(truth) == tiny_tfds.N_PROBE
  for pc in (1, 2, 4):
    got = np.concatenate([sources.split_labels(c, 'probe', process_index=p,
                                                      process_count=pc) for p in range(pc)])
    np.testing.assert_array_equal(got, truth, err_msg=f'{pc} process(es)')
  bank = knn.bank_indices(sources.split_labels(c, 'probe'), 100, N_CLASSES)
  np.testing.assert_array_equal(np.bincount(truth[bank], minlength=N_CLASSES), [20] * 5)
  subset = supervised.label_subset(sources.split_labels(c, 'probe'), 0.1)
  np.testing.assert_array_equal(np.bincount(truth[subset], minlength=N_CLASSES), [20] * 5)
  for pi in range(2):  # Eval batches: each example's label is the one stored at its index.
    for batch in input_pipeline.eval_batches(c, 'probe', global_batch=64, process_index=pi,
                                             process_count=2):
      real = batch['mask'] > 0
      np.testing.assert_array_equal(batch['label'][real], truth[batch['index'][real]])
  c.data.cache = True
  np.testing.assert_array_equal(sources.load_split(c, 'probe')['label'], truth)


@pytest.mark.parametrize('cache', [True, False])
def test_undecodable_training_records_are_skipped_and_counted(tfds_shards_dir, cache):
  """4 of the 64 train records are not images: the stream drops exactly them (every good
  record appears once per epoch) and 'seq' leaves one gap per dropped record."""
  c = _config(tiny_tfds.SHARDS_NAME, tfds_shards_dir, batch=20, aug=False)
  c.data.cache = cache
  good = tiny_tfds.N_SHARD_TRAIN - len(tiny_tfds.CORRUPT_IDS)
  batches = _take(input_pipeline.train_dataset(c, process_index=0, process_count=1), 6)
  ids = np.concatenate([tiny_tfds.ids_of(b['views']) for b in batches])
  assert len(ids) == 2 * good  # Two epochs of the good records.
  assert not set(ids.ravel()) & set(tiny_tfds.CORRUPT_IDS)
  for epoch in (ids[:good], ids[good:]):
    np.testing.assert_array_equal(np.sort(epoch[:, 0]),
                                  sorted(set(range(64)) - set(tiny_tfds.CORRUPT_IDS)))
  seq = np.concatenate([b['seq'] for b in batches])
  assert np.all(np.diff(seq) > 0) and seq[0] >= 0
  gaps = int(seq[-1]) + 1 - len(seq)  # Records read minus records kept.
  assert 4 <= gaps <= 8, gaps  # Epoch 1's four, and those of epoch 2 read so far.
