"""tf.data pipelines: a source (data/sources.py) -> this process's rows -> views -> batches.

Multi-host: every function takes `process_index` / `process_count` explicitly (never reads them
from JAX) and yields host-local batches of `global_batch // P`; the train loop assembles global
arrays from them.

Training order (data/streams.py): a split held in host memory (the embedded set, or
`data.cache=True`) has one global order per (seed, epoch), each process taking its rows of every
global batch, and each element's augmentation seeded by its global position: the global batch at
step s is the same for any process count. A file-backed TFDS split (`data.cache=False`) is read
as per-process file shards, reshuffled and interleaved every epoch; its global batch depends on
the process count. Both are pure functions of (config.seed, step, process layout), so a resumed
run sees exactly the views the uninterrupted run would have seen.

Evaluation reads each process's contiguous share of the split (or of a subset of its positions,
such as a kNN bank) in stored order (eval_batches).
Images cross to the device as uint8 (4x fewer bytes than float32); the step divides by 255.
Encoded (TFDS) training images reach the augmentation undecoded, which decodes only the JPEG
window the two views' crops need (JPEG_DECODE). With config.aug.on_device the host ships crop +
flip only and the step applies colour, grayscale and blur (simclr_jax/data/device_augment.py).
"""

import functools
from typing import Iterator, Optional

import ml_collections
import numpy as np
import tensorflow as tf

from simclr_jax.data import augment
from simclr_jax.data import embedded
from simclr_jax.data import errors
from simclr_jax.data import extra_augment
from simclr_jax.data import folder
from simclr_jax.data import sources
from simclr_jax.data import streams

_SHUFFLE_SALT = 1_000_003
_AUG_SALT = 2_000_003
# How training views of encoded (TFDS) JPEGs are decoded: 'union' decodes once, only the window
# that holds both views' crops (tf.io.decode_and_crop_jpeg), and slices each crop from it;
# 'per_view' decodes each view's own window; 'whole' decodes the whole image once when it is read.
# All three take the same crop windows; bench/input_pipeline.py measures them
# (docs/performance.md). Other formats (PNG) are decoded whole once in every mode.
JPEG_DECODE = 'union'
JPEG_DECODES = ('union', 'per_view', 'whole')


DataConfigError = errors.DataConfigError


def make_views_fn(config: ml_collections.ConfigDict, stream_id: int = 0,
                  dtype: tf.DType = tf.uint8, jpeg_decode: str = JPEG_DECODE):
  """fn(t, image) -> [2, S, S, 3] views of stream element t (the training augmentation).

  Element t of stream `stream_id` (0 for the global in-memory order; the process index for
  per-process file streams) always gets the seeds (config.seed, stream_id, t), so the views are
  a pure function of the image and its position in the stream. `image`: uint8 pixels, or encoded
  bytes, decoded here as `jpeg_decode` says (JPEG_DECODE; augment.preprocess_views_for_train).
  `dtype` uint8 (what the pipeline ships: round(x * 255)) or float32 (the augmentation's own
  [0, 1] output; for the benchmark). With config.aug.on_device the views are crop + flip only;
  colour distortion and blur then run in the train step (simclr_jax/data/device_augment.py).
  config.aug.rotate / sobel / noise / cutout add the ops of simclr_jax/data/extra_augment.py (with
  on_device only rotate, a host op); config.aug.asymmetric makes view 2 the image only resized.
  """
  if jpeg_decode not in JPEG_DECODES:
    raise ValueError(f'jpeg_decode={jpeg_decode!r}; allowed: {JPEG_DECODES}.')
  a, size, seed = config.aug, config.data.image_size, config.seed
  on_device = bool(a.get('on_device', False))
  extra = tuple(n for n, on in extra_augment.switches(a).items() if on)
  if on_device and set(extra) - set(extra_augment.ON_DEVICE):
    raise ValueError(extra_augment.ON_DEVICE_ERROR)
  kw = dict(color_jitter_strength=0.0 if on_device else a.color_jitter_strength,
            use_blur=a.use_blur and not on_device, crop=a.crop, flip=a.flip, impl=a.impl,
            area_min=a.crop_area_min, extra=extra, asymmetric=bool(a.get('asymmetric', False)))

  def views_fn(t, image):
    base = tf.stack([tf.constant(seed * _AUG_SALT + stream_id, tf.int64),
                     tf.cast(t, tf.int64)])
    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(base, 2))
    views = tf.stack(augment.preprocess_views_for_train(
        image, size, size, [s1, s2], jpeg_union=jpeg_decode == 'union', **kw))
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
    raise DataConfigError(f'batch size {global_batch} does not split over {process_count} '
                          'processes.')
  return global_batch // process_count


def train_dataset(config: ml_collections.ConfigDict, *, process_index: int, process_count: int,
                  start_step: int = 0) -> tf.data.Dataset:
  """Infinite stream of host-local batches {'views': uint8 [b,2,H,W,3], 'label': int32 [b],
  'seq': int64 [b]} ('seq': see skip_undecodable)."""
  b = per_process_batch(config.train.batch_size, process_count)
  # Encoded images reach the augmentation undecoded: it decodes only the crop windows it needs.
  ds, stream_id = training_stream(config, config.data.train_split, process_index=process_index,
                                  process_count=process_count, start_step=start_step,
                                  decode=JPEG_DECODE == 'whole')
  views_fn = make_views_fn(config, stream_id)
  ds = skip_undecodable(
      ds, lambda t, ex: {'views': views_fn(t, ex['image']), 'label': ex['label']},
      first=start_step * b)
  ds = ds.batch(b, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def skip_undecodable(stream: tf.data.Dataset, fn, first: int) -> tf.data.Dataset:
  """fn(t, example) -> dict over a training stream, dropping the elements whose image fails to
  decode (a corrupt record stops no host); each kept element gets 'seq' int64, its position in
  this process's stream counted from `first` (= start_step x per-process batch), so the loop
  counts what was skipped from the gaps (loop.SkipCounter). Skipped records are not replaced:
  a resume re-reads as many records as were skipped before it."""
  def apply(seq, item):
    t, ex = item
    return dict(fn(t, ex), seq=seq)
  ds = stream.enumerate(start=first).map(apply, num_parallel_calls=tf.data.AUTOTUNE,
                                          deterministic=True)
  return ds.ignore_errors()


def in_memory(config: ml_collections.ConfigDict) -> bool:
  """Whether training reads the split from host memory (global order) or from files. A
  `folder:DIR` split is always in memory (data/folder.py; prepare it for file-backed reading)."""
  return (embedded.is_embedded(config.data.dataset) or folder.is_folder(config.data.dataset)
          or bool(config.data.cache))


def training_stream(config: ml_collections.ConfigDict, split: str, *, process_index: int,
                    process_count: int, start_step: int, shuffle_salt: int = _SHUFFLE_SALT,
                    indices: Optional[np.ndarray] = None, decode: bool = True
                    ) -> tuple[tf.data.Dataset, int]:
  """(t, {'image': uint8 [h,w,3], 'label': int32}) from step start_step on, and the stream id
  that seeds the augmentation with t (see data/streams.py for the two orders).

  `indices`: kept examples of the whole split in stored order (label fractions); None = all.
  `decode=False`: encoded images (TFDS) stay encoded bytes (scalar tf.string) for the
  augmentation to decode; pixels (the embedded set) are unaffected.
  """
  d = config.data
  global_batch = config.train.batch_size
  b = per_process_batch(global_batch, process_count)
  salt = config.seed * shuffle_salt
  if in_memory(config):
    examples = sources.load_split(config, split)
    if indices is not None:
      examples = {k: v[indices] for k, v in examples.items()}
    ds = streams.memory_stream(examples, global_batch=global_batch, process_index=process_index,
                               process_count=process_count, start_step=start_step, salt=salt)
    return ds.map(lambda t, ex: (t, sources.decoded(ex, decode)),
                  num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True), 0
  builder = sources.tfds_builder(config)
  sources.check_split(config, builder, split)
  if builder.info.file_format.value != 'tfrecord':
    raise DataConfigError(f'config.data.dataset={d.dataset!r} is stored as '
                          f'{builder.info.file_format.value}; file-backed training reads '
                          'tfrecord: set config.data.cache=True or prepare it with '
                          '--file_format=tfrecord.')
  keep = None
  if indices is not None:
    keep = np.zeros((builder.info.splits[split].num_examples,), bool)
    keep[indices] = True
  parse = functools.partial(sources.parse_record, builder.info.features, decode=decode)
  ds, _ = streams.file_stream(
      builder.info.splits[split].file_instructions, b=b, process_index=process_index,
      process_count=process_count, start_step=start_step, salt=salt,
      shuffle_buffer=d.shuffle_buffer, parse=parse, keep=keep)
  return ds, process_index


def num_eval_batches(num_examples: int, global_batch: int, process_count: int) -> int:
  """Batches every process yields in eval_batches (the largest share, rounded up)."""
  b = per_process_batch(global_batch, process_count)
  return -(-(-(-num_examples // process_count)) // b)


def eval_batches(config: ml_collections.ConfigDict, split: str, *, global_batch: int,
                 process_index: int, process_count: int, num_examples: Optional[int] = None,
                 indices: Optional[np.ndarray] = None) -> Iterator[dict[str, np.ndarray]]:
  """Every example of `split` exactly once: {'image' uint8 [b,H,W,3], 'label', 'mask', 'index'}
  batches; 'index' int32 is the example's position in the split's stored order (-1: padding).

  The last batch is padded (mask 0, label 0). All processes yield the same number of batches, as
  the step needs every process to contribute. `num_examples` is the whole split's size.
  `indices`: sorted stored-order positions of the only examples to yield (a kNN bank subset);
  each process then takes a contiguous share of them and reads just the stored range that share
  spans, decoding only the kept examples.
  Padding is done here rather than by clu.deterministic_data.pad_dataset, which fills with
  zeros: padding rows must carry index -1 (0 is a real position), and a process whose share is
  empty (more processes than examples in a small bank) has no dataset to pad.
  """
  b = per_process_batch(global_batch, process_count)
  if indices is None:
    total = sources.split_size(config, split) if num_examples is None else num_examples
    lo, hi = sources.shard_bounds(total, process_index, process_count)
    ds = sources.read_range(config, split, lo, hi) if hi > lo else None
    positions = np.arange(lo, hi, dtype=np.int64)
  else:
    positions = np.asarray(indices, np.int64)
    total = len(positions)
    if np.any(np.diff(positions) <= 0) or (total and positions[0] < 0):
      raise ValueError('eval_batches: indices must be sorted, distinct and >= 0.')
    lo, hi = sources.shard_bounds(total, process_index, process_count)
    positions = positions[lo:hi]
    ds = None
    if len(positions):
      first, last = int(positions[0]), int(positions[-1]) + 1
      keep = np.zeros((last - first,), bool)
      keep[positions - first] = True
      keep = tf.constant(keep)
      ds = sources.read_range(config, split, first, last).enumerate().filter(
          lambda i, ex: keep[i]).map(lambda i, ex: ex)
  num_batches = num_eval_batches(total, global_batch, process_count)
  size = config.data.image_size

  def prep(ex):
    return {'image': eval_image(config, ex['image']), 'label': ex['label']}

  it = iter(())
  if ds is not None:
    it = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE).batch(b).prefetch(2).as_numpy_iterator()
  for j in range(num_batches):
    batch = next(it, None)
    if batch is None:
      batch = {'image': np.zeros((0, size, size, 3), np.uint8), 'label': np.zeros((0,), np.int32)}
    k = len(batch['label'])
    mask = np.zeros((b,), np.float32)
    mask[:k] = 1.0
    index = np.full((b,), -1, np.int32)
    index[:k] = positions[j * b:j * b + k]
    yield {'image': _pad(batch['image'], b), 'label': _pad(batch['label'], b), 'mask': mask,
           'index': index}


def _pad(x: np.ndarray, b: int) -> np.ndarray:
  if len(x) == b:
    return x
  pad = np.zeros((b - len(x),) + x.shape[1:], x.dtype)
  return np.concatenate([x, pad])
