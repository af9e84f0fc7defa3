"""tf.data pipelines: source (embedded set or TFDS) -> this process's share -> views -> batches.

Multi-host: every function takes `process_index` / `process_count` explicitly (never reads them
from JAX), reads a disjoint 1/P share of the split and yields host-local batches of
`global_batch // P`; the train loop assembles global arrays from them.

Determinism: the training stream is a pure function of (config.seed, process_index). Epoch e of a
process is its share shuffled with seed (seed, e); element t of the stream (counted from step 0)
gets augmentation seed (seed, t). Resuming at step k rebuilds the stream at element k * b, so the
resumed run sees exactly the views the uninterrupted run would have seen. Shuffling is stateless
(permutations of blocks of config.data.shuffle_buffer examples; one block = a full permutation
when the share fits), so TF's global seed does not enter. TFDS files are read in their stored
order (shuffle_files=False), so shares larger than the buffer are only shuffled within blocks.

Images cross to the device as uint8 (4x fewer bytes than float32); the step divides by 255.
"""

import dataclasses
from typing import Iterator, Optional

import ml_collections
import numpy as np
import tensorflow as tf

from simclr_jax.data import augment
from simclr_jax.data import embedded

_SHUFFLE_SALT = 1_000_003
_AUG_SALT = 2_000_003


class DataNotReadyError(RuntimeError):
  """The requested TFDS data set is not prepared in data_dir (and downloads are off)."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_train: int  # Examples in the whole train split (all processes).
  num_eval: int  # Examples in the whole eval split.
  num_classes: int


def _tfds_builder(config: ml_collections.ConfigDict):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  d = config.data
  try:
    builder = tfds.builder(d.dataset, data_dir=d.data_dir)
  except Exception as e:  # tfds raises DatasetNotFoundError with a long list.
    raise ValueError(f'config.data.dataset={d.dataset!r} is neither {embedded.NAME!r} nor a TFDS '
                     f'builder: {str(e).splitlines()[0]}') from e
  if not builder.is_prepared():
    if d.download:
      builder.download_and_prepare()
    else:
      manual = ''
      if d.dataset.startswith('imagenet2012'):
        manual = (' ImageNet cannot be downloaded automatically: put ILSVRC2012_img_train.tar and '
                  'ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/ first.')
      raise DataNotReadyError(
          f'TFDS data set {d.dataset!r} is not prepared in data_dir={builder.data_dir_root!r} '
          f'(looked for {builder.data_dir}). Prepare it once with:\n'
          f'  tfds build {d.dataset.split("/")[0]}'
          + (f' --config={d.dataset.split("/")[1]}' if '/' in d.dataset else '')
          + (f' --data_dir={d.data_dir}' if d.data_dir else '') + '\n'
          f'or set --config.data.download=True to let this job download it.{manual}')
  return builder


def get_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Sizes and class count, checked before any compilation. Raises with what to do if missing."""
  d = config.data
  if d.dataset == embedded.NAME:
    for key in ('train_split', 'eval_split'):
      if d[key] not in embedded.SPLITS:
        raise ValueError(f'config.data.{key}={d[key]!r} is not a split of {d.dataset}; allowed: '
                         f'{sorted(embedded.SPLITS)}.')
    sizes = {s: len(embedded.load(s)[1]) for s in (d.train_split, d.eval_split)}
    return DatasetInfo(d.dataset, sizes[d.train_split], sizes[d.eval_split], embedded.NUM_CLASSES)
  builder = _tfds_builder(config)
  splits = builder.info.splits
  for key in ('train_split', 'eval_split'):
    split = d[key]
    try:
      splits[split]
    except (KeyError, ValueError) as e:
      raise ValueError(f'config.data.{key}={split!r} is not a split of {d.dataset}; allowed: '
                       f'{sorted(splits.keys())}.') from e
  label = builder.info.features['label']
  return DatasetInfo(d.dataset, splits[d.train_split].num_examples,
                     splits[d.eval_split].num_examples, label.num_classes)


def shard_bounds(n: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, end) of this process's contiguous share of n examples (sizes differ by at most 1)."""
  return n * process_index // process_count, n * (process_index + 1) // process_count


def source(config: ml_collections.ConfigDict, split: str, process_index: int = 0,
           process_count: int = 1) -> tuple[tf.data.Dataset, int, int]:
  """This process's share of `split` as {'image': uint8 [h,w,3], 'label': int32}, in the split's
  stored order (no shuffling), with the share's size and the whole split's size."""
  d = config.data
  if d.dataset == embedded.NAME:
    images, labels = embedded.load(split)
    lo, hi = shard_bounds(len(labels), process_index, process_count)
    ds = tf.data.Dataset.from_tensor_slices({'image': images[lo:hi], 'label': labels[lo:hi]})
    return ds, hi - lo, len(labels)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _tfds_builder(config)
  splits = builder.info.splits
  if split not in splits:
    raise ValueError(f'split {split!r} (config.data.train_split / eval_split) is not a split of '
                     f'{d.dataset}; allowed: {sorted(splits.keys())}.')
  n = splits[split].num_examples
  lo, hi = shard_bounds(n, process_index, process_count)
  ds = builder.as_dataset(split=f'{split}[{lo}:{hi}]', shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})

  def decode(ex):
    image = tf.io.decode_image(ex['image'], channels=3, expand_animations=False)
    return {'image': image, 'label': tf.cast(ex['label'], tf.int32)}

  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  return ds, hi - lo, n


def make_views_fn(config: ml_collections.ConfigDict, process_index: int = 0,
                  dtype: tf.DType = tf.uint8):
  """fn(t, image) -> [2, S, S, 3] views of stream element t (the training augmentation).

  Element t of process p always gets the seeds (config.seed, p, t), so the views are a pure
  function of the image and its position in the stream. `dtype` uint8 (what the pipeline ships:
  round(x * 255)) or float32 (the augmentation's own [0, 1] output; for the benchmark).
  """
  a, size, seed = config.aug, config.data.image_size, config.seed
  kw = dict(color_jitter_strength=a.color_jitter_strength, use_blur=a.use_blur, crop=a.crop,
            flip=a.flip, impl=a.impl, area_min=a.crop_area_min)

  def views_fn(t, image):
    base = tf.stack([tf.constant(seed * _AUG_SALT + process_index, tf.int64),
                     tf.cast(t, tf.int64)])
    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(base, 2))
    views = tf.stack([augment.preprocess_for_train(image, size, size, seed=s, **kw)
                      for s in (s1, s2)])
    if dtype == tf.uint8:
      return tf.cast(tf.round(views * 255.0), tf.uint8)
    return tf.cast(views, dtype)

  return views_fn


def eval_image(config: ml_collections.ConfigDict, image: tf.Tensor) -> tf.Tensor:
  """The eval view as uint8 [S, S, 3]: centre crop 0.875 + resize; no crop at <= 32 px (official)."""
  size = config.data.image_size
  image = augment.preprocess_for_eval(image, size, size, crop=size > 32)
  return tf.cast(tf.round(image * 255.0), tf.uint8)


def per_process_batch(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f'batch size {global_batch} does not split over {process_count} processes.')
  return global_batch // process_count


def train_dataset(config: ml_collections.ConfigDict, *, process_index: int, process_count: int,
                  start_step: int = 0) -> tf.data.Dataset:
  """Infinite stream of host-local batches {'views': uint8 [b,2,H,W,3], 'label': int32 [b]}."""
  d = config.data
  b = per_process_batch(config.train.batch_size, process_count)
  src, n, _ = source(config, d.train_split, process_index, process_count)
  ds = indexed_stream(config, src, n, b=b, process_index=process_index,
                      process_count=process_count, start_step=start_step)
  views_fn = make_views_fn(config, process_index)

  def two_views(t, ex):
    return {'views': views_fn(t, ex['image']), 'label': ex['label']}

  ds = ds.map(two_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(b, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def indexed_stream(config: ml_collections.ConfigDict, src: tf.data.Dataset, n: int, *, b: int,
                   process_index: int, process_count: int, start_step: int,
                   shuffle_salt: int = _SHUFFLE_SALT) -> tf.data.Dataset:
  """Endless (t, example) stream of one process's share `src` (n examples), from element
  start_step * b: epoch e is `src` shuffled with seed (seed, process, e), and t counts elements
  from step 0 (it seeds the augmentation), so a resumed stream equals the uninterrupted one."""
  d = config.data
  if n < b:
    raise ValueError(f'config.train.batch_size={config.train.batch_size}: each of the '
                     f'{process_count} process(es) needs {b} examples per batch but holds {n}.')
  if d.cache:
    src = src.cache()
  first = start_step * b
  first_epoch = first // n
  salt = config.seed * shuffle_salt + process_index

  def epoch(e):
    return _stateless_shuffle(src, min(d.shuffle_buffer, n), [salt, e])

  ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch)
  return ds.skip(first - first_epoch * n).enumerate(start=first)


def _stateless_shuffle(ds: tf.data.Dataset, block: int, seed) -> tf.data.Dataset:
  """Shuffles consecutive blocks of `block` examples with stateless random permutations.

  A block that holds the whole share (every data set whose share fits in config.data.shuffle_buffer)
  gives a uniform permutation. Unlike Dataset.shuffle(seed=...), whose seed pair also takes TF's
  global seed (so a tf.random.set_seed() anywhere in the process changed the order and broke
  resume), the order is a function of `seed` alone. Images of varying sizes travel as ragged rows.
  """
  seed = tf.cast(tf.stack(seed), tf.int64)

  def permute(j, blk):
    m = tf.shape(blk['label'])[0]
    key = tf.random.stateless_uniform([m], seed=tf.stack([seed[0], seed[1] * 2**20 + j]))
    perm = tf.argsort(key)
    return tf.nest.map_structure(lambda x: tf.gather(x, perm), blk)

  def dense(ex):
    return {k: v.to_tensor() if isinstance(v, tf.RaggedTensor) else v for k, v in ex.items()}

  return ds.ragged_batch(block).enumerate().map(permute).unbatch().map(dense)


def eval_batches(config: ml_collections.ConfigDict, split: str, *, global_batch: int,
                 process_index: int, process_count: int,
                 num_examples: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
  """Every example of `split` exactly once: {'image' uint8 [b,H,W,3], 'label', 'mask'} batches.

  The last batch is padded (mask 0). All processes yield the same number of batches, as the
  step needs every process to contribute. `num_examples` is the whole split's size.
  """
  b = per_process_batch(global_batch, process_count)
  src, _, total = source(config, split, process_index, process_count)
  if num_examples is None:
    num_examples = total  # (Shares differ by one: every process must use the split's size.)
  max_share = -(-num_examples // process_count)
  num_batches = -(-max_share // b)
  size = config.data.image_size

  def prep(ex):
    return {'image': eval_image(config, ex['image']), 'label': ex['label']}

  ds = src.map(prep, num_parallel_calls=tf.data.AUTOTUNE).batch(b).prefetch(2)
  it = ds.as_numpy_iterator()
  for _ in range(num_batches):
    batch = next(it, None)
    if batch is None:
      batch = {'image': np.zeros((0, size, size, 3), np.uint8), 'label': np.zeros((0,), np.int32)}
    k = len(batch['label'])
    mask = np.zeros((b,), np.float32)
    mask[:k] = 1.0
    yield {'image': _pad(batch['image'], b), 'label': _pad(batch['label'], b), 'mask': mask}


def _pad(x: np.ndarray, b: int) -> np.ndarray:
  if len(x) == b:
    return x
  pad = np.zeros((b - len(x),) + x.shape[1:], x.dtype)
  return np.concatenate([x, pad])
