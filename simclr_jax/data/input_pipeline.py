"""tf.data pipelines: source (embedded set or TFDS) -> this process's rows -> views -> batches.

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
flip only and the step applies colour, grayscale and blur (simclr_jax/device_augment.py).
"""

import dataclasses
import functools
from typing import Iterator, Optional

import ml_collections
import numpy as np
import tensorflow as tf

from simclr_jax.data import augment
from simclr_jax.data import embedded
from simclr_jax.data import errors
from simclr_jax.data import streams

_SHUFFLE_SALT = 1_000_003
_AUG_SALT = 2_000_003
# How training views of encoded (TFDS) JPEGs are decoded: 'union' decodes once, only the window
# that holds both views' crops (tf.io.decode_and_crop_jpeg), and slices each crop from it;
# 'per_view' decodes each view's own window; 'whole' decodes the whole image once when it is read.
# All three take the same crop windows; bench/input_pipeline.py measures them (README,
# Performance). Other formats (PNG) are decoded whole once in every mode.
JPEG_DECODE = 'union'
JPEG_DECODES = ('union', 'per_view', 'whole')
HEAD_LABELS = 256  # Labels get_info reads from the start of the probe and eval splits.


DataConfigError = errors.DataConfigError


class DataNotReadyError(RuntimeError):
  """The requested TFDS data set is not prepared in data_dir (and downloads are off)."""


class UnlabelledError(ValueError):
  """A label outside [0, num_classes) would reach a classifier (kNN bank, probe, eval split).

  TFDS marks examples without a label with -1 (stl10's 'unlabelled' split): pretraining may use
  such a split, but the kNN bank and the linear probe need config.data.probe_train_split.
  """


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_train: int  # Examples in the whole train split (all processes).
  num_eval: int  # Examples in the whole eval split.
  num_classes: int
  num_probe_train: int = 0  # Examples in probe_split(config): the kNN bank's and probe's split.


def probe_split(config: ml_collections.ConfigDict) -> str:
  """The labelled split of the kNN bank and the final linear probe: data.probe_train_split, or
  data.train_split when that is unset."""
  return config.data.probe_train_split or config.data.train_split


def _tfds_builder(config: ml_collections.ConfigDict):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  d = config.data
  try:
    builder = tfds.builder(d.dataset, data_dir=d.data_dir)
  except Exception as e:  # tfds raises DatasetNotFoundError with a long list.
    raise DataConfigError(f'config.data.dataset={d.dataset!r} is neither {embedded.NAME!r} nor '
                          f'a TFDS builder: {str(e).splitlines()[0]}') from e
  if not builder.is_prepared():
    if d.download:
      builder.download_and_prepare()
    else:
      manual = ''
      if d.dataset.startswith('imagenet2012'):
        manual = (' ImageNet cannot be downloaded automatically: put ILSVRC2012_img_train.tar and '
                  'ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/ first.')
      command = (f'tfds build {d.dataset.split("/")[0]}'
                 + (f' --config={d.dataset.split("/")[1]}' if '/' in d.dataset else '')
                 + (f' --data_dir={d.data_dir}' if d.data_dir else ''))
      raise DataNotReadyError(
          f'TFDS data set {d.dataset!r} (config.data.dataset) is not prepared in '
          f'data_dir={builder.data_dir_root!r} (looked for {builder.data_dir}): prepare it once '
          f'with `{command}`, or set --config.data.download=True to let this job download '
          f'it.{manual}')
  return builder


def get_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Sizes and class count, checked before any compilation. Raises with what to do if missing."""
  d = config.data
  keys = ('train_split', 'eval_split') + (('probe_train_split',) if d.probe_train_split else ())
  if d.dataset == embedded.NAME:
    for key in keys:
      if d[key] not in embedded.SPLITS:
        raise DataConfigError(f'config.data.{key}={d[key]!r} is not a split of {d.dataset}; '
                              f'allowed: {sorted(embedded.SPLITS)}.')
    sizes = {s: len(embedded.load(s)[1]) for s in (d.train_split, d.eval_split, probe_split(config))}
    info = DatasetInfo(d.dataset, sizes[d.train_split], sizes[d.eval_split], embedded.NUM_CLASSES,
                       sizes[probe_split(config)])
    _check_head_labels(config, info.num_classes)
    return info
  builder = _tfds_builder(config)
  splits = builder.info.splits
  for key in keys:
    split = d[key]
    try:
      splits[split]
    except (KeyError, ValueError) as e:
      raise DataConfigError(f'config.data.{key}={split!r} is not a split of {d.dataset}; '
                            f'allowed: {sorted(splits.keys())}.') from e
  label = builder.info.features['label']
  info = DatasetInfo(d.dataset, splits[d.train_split].num_examples,
                     splits[d.eval_split].num_examples, label.num_classes,
                     splits[probe_split(config)].num_examples)
  _check_head_labels(config, info.num_classes)
  return info


def _check_head_labels(config: ml_collections.ConfigDict, num_classes: int) -> None:
  """Fails fast on an unlabelled probe or eval split from its first HEAD_LABELS labels (the
  extraction checks every label on the devices later)."""
  d = config.data
  probe_key = ('probe_train_split' if d.probe_train_split else
               'train_split (the kNN bank and probe split while data.probe_train_split is unset)')
  for key, split in ((probe_key, probe_split(config)), ('eval_split', d.eval_split)):
    check_labels(split_labels(config, split, limit=HEAD_LABELS), num_classes,
                 f'config.data.{key}={split!r}')


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
  """Raises UnlabelledError if any of `labels` is outside [0, num_classes)."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise UnlabelledError(
        f'{where}: labels must be in [0, {num_classes}) to train or score a classifier, found '
        f'{int(labels.min())}..{int(labels.max())}' + (
            ' (-1 is TFDS\'s "no label", e.g. stl10 \'unlabelled\'). Pretrain on it if you like, '
            'but point the kNN bank and probes at a labelled split, e.g. '
            '--config.data.probe_train_split=train for stl10 (linear_eval / finetune: '
            '--config.data.train_split)' if labels.min() < 0 else '') + '.')


def split_labels(config: ml_collections.ConfigDict, split: str, *, process_index: int = 0,
                 process_count: int = 1, limit: Optional[int] = None) -> np.ndarray:
  """Labels int32 of this process's contiguous share of `split` (shard_bounds), stored order.

  Reads only labels (images stay encoded bytes): ImageNet's train split is one pass over its
  records, 1/process_count of them per process. `limit`: only the first `limit` examples of the
  split (the same on every process; process_index/count ignored).
  """
  d = config.data
  if d.dataset == embedded.NAME:
    labels = embedded.load(split)[1]
    if limit is not None:
      return labels[:limit]
    lo, hi = shard_bounds(len(labels), process_index, process_count)
    return labels[lo:hi]
  builder = _tfds_builder(config)
  _check_split(config, builder, split)
  n = builder.info.splits[split].num_examples
  lo, hi = (0, min(limit, n)) if limit is not None else shard_bounds(n, process_index,
                                                                     process_count)
  if hi <= lo:
    return np.zeros((0,), np.int32)
  ds = stored_order(builder, f'{split}[{lo}:{hi}]')
  ds = ds.map(lambda ex: tf.cast(ex['label'], tf.int32), num_parallel_calls=tf.data.AUTOTUNE)
  return np.fromiter(ds.as_numpy_iterator(), np.int32, count=hi - lo)


def stored_order(builder, split: str) -> tf.data.Dataset:
  """TFDS examples of `split` (e.g. 'train[100:200]') in the order they are stored, images as
  encoded bytes. `shuffle_files=False` alone is not enough: TFDS still interleaves 16 files in
  blocks of 16 records unless the set was built with disable_shuffling, which would permute
  the positions that kNN banks, label fractions and eval indices refer to."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return builder.as_dataset(
      split=split, shuffle_files=False, decoders={'image': tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(interleave_cycle_length=1))


def shard_bounds(n: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, end) of this process's contiguous share of n examples (sizes differ by at most 1)."""
  return n * process_index // process_count, n * (process_index + 1) // process_count


def source(config: ml_collections.ConfigDict, split: str, process_index: int = 0,
           process_count: int = 1) -> tuple[tf.data.Dataset, int, int]:
  """This process's share of `split` as {'image': uint8 [h,w,3], 'label': int32}, in the split's
  stored order (no shuffling), with the share's size and the whole split's size."""
  n = _split_size(config, split)
  lo, hi = shard_bounds(n, process_index, process_count)
  return _read_range(config, split, lo, hi), hi - lo, n


def _split_size(config: ml_collections.ConfigDict, split: str) -> int:
  if config.data.dataset == embedded.NAME:
    return len(embedded.load(split)[1])
  builder = _tfds_builder(config)
  _check_split(config, builder, split)
  return builder.info.splits[split].num_examples


def _read_range(config: ml_collections.ConfigDict, split: str, lo: int, hi: int
                ) -> tf.data.Dataset:
  """Examples [lo, hi) of `split` in stored order: {'image': uint8 [h,w,3], 'label': int32}."""
  if config.data.dataset == embedded.NAME:
    images, labels = embedded.load(split)
    return tf.data.Dataset.from_tensor_slices({'image': images[lo:hi], 'label': labels[lo:hi]})
  ds = stored_order(_tfds_builder(config), f'{split}[{lo}:{hi}]')

  def decode(ex):
    image = tf.io.decode_image(ex['image'], channels=3, expand_animations=False)
    return {'image': image, 'label': tf.cast(ex['label'], tf.int32)}

  return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def make_views_fn(config: ml_collections.ConfigDict, stream_id: int = 0,
                  dtype: tf.DType = tf.uint8, jpeg_decode: str = JPEG_DECODE):
  """fn(t, image) -> [2, S, S, 3] views of stream element t (the training augmentation).

  Element t of stream `stream_id` (0 for the global in-memory order; the process index for
  per-process file streams) always gets the seeds (config.seed, stream_id, t), so the views are
  a pure function of the image and its position in the stream. `image`: uint8 pixels, or encoded
  bytes, decoded here as `jpeg_decode` says (JPEG_DECODE; augment.preprocess_views_for_train).
  `dtype` uint8 (what the pipeline ships: round(x * 255)) or float32 (the augmentation's own
  [0, 1] output; for the benchmark). With config.aug.on_device the views are crop + flip only;
  colour distortion and blur then run in the train step (simclr_jax/device_augment.py).
  """
  if jpeg_decode not in JPEG_DECODES:
    raise ValueError(f'jpeg_decode={jpeg_decode!r}; allowed: {JPEG_DECODES}.')
  a, size, seed = config.aug, config.data.image_size, config.seed
  on_device = bool(a.get('on_device', False))
  kw = dict(color_jitter_strength=0.0 if on_device else a.color_jitter_strength,
            use_blur=a.use_blur and not on_device, crop=a.crop, flip=a.flip, impl=a.impl,
            area_min=a.crop_area_min)

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
  """Whether training reads the split from host memory (global order) or from files."""
  return config.data.dataset == embedded.NAME or bool(config.data.cache)


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
    examples = load_split(config, split)
    if indices is not None:
      examples = {k: v[indices] for k, v in examples.items()}
    ds = streams.memory_stream(examples, global_batch=global_batch, process_index=process_index,
                               process_count=process_count, start_step=start_step, salt=salt)
    return ds.map(lambda t, ex: (t, _decoded(ex, decode)), num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True), 0
  builder = _tfds_builder(config)
  _check_split(config, builder, split)
  if builder.info.file_format.value != 'tfrecord':
    raise DataConfigError(f'config.data.dataset={d.dataset!r} is stored as '
                          f'{builder.info.file_format.value}; file-backed training reads '
                          'tfrecord: set config.data.cache=True or prepare it with '
                          '--file_format=tfrecord.')
  keep = None
  if indices is not None:
    keep = np.zeros((builder.info.splits[split].num_examples,), bool)
    keep[indices] = True
  parse = functools.partial(_parse_record, builder.info.features, decode=decode)
  ds, _ = streams.file_stream(
      builder.info.splits[split].file_instructions, b=b, process_index=process_index,
      process_count=process_count, start_step=start_step, salt=salt,
      shuffle_buffer=d.shuffle_buffer, parse=parse, keep=keep)
  return ds, process_index


def _parse_record(features, record: tf.Tensor, decode: bool = True) -> dict:
  from tensorflow_datasets import decode as tfds_decode  # pylint: disable=g-import-not-at-top
  ex = features.deserialize_example(record, decoders={'image': tfds_decode.SkipDecoding()})
  return _decoded({'image': ex['image'], 'label': ex['label']}, decode)


def _decoded(ex: dict, decode: bool = True) -> dict:
  """{'image': encoded bytes or uint8 pixels, 'label'} -> uint8 [h, w, 3] pixels (encoded bytes
  kept as they are if not `decode`), int32 label."""
  image = ex['image']
  if decode and image.dtype == tf.string:
    image = augment.decode_image(image)
  return {'image': image, 'label': tf.cast(ex['label'], tf.int32)}


@functools.lru_cache(maxsize=4)
def _load_tfds_split(dataset: str, data_dir: Optional[str], split: str) -> dict:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = stored_order(tfds.builder(dataset, data_dir=data_dir), split)
  images, labels = [], []
  for ex in ds.as_numpy_iterator():
    images.append(ex['image'])
    labels.append(ex['label'])
  out = {'image': np.empty((len(images),), object), 'label': np.asarray(labels, np.int32)}
  out['image'][:] = images
  return out


def load_split(config: ml_collections.ConfigDict, split: str) -> dict:
  """The whole split in host memory, stored order: {'image': uint8 [n,h,w,3] (embedded) or
  encoded bytes (object [n], TFDS: decoded per use), 'label': int32 [n]}. Cached per process."""
  d = config.data
  if d.dataset == embedded.NAME:
    images, labels = embedded.load(split)
    return {'image': images, 'label': labels}
  _check_split(config, _tfds_builder(config), split)
  return _load_tfds_split(d.dataset, d.data_dir, split)


def _check_split(config, builder, split: str) -> None:
  if split not in builder.info.splits:
    raise DataConfigError(f'split {split!r} (config.data.train_split / eval_split) is not a '
                          f'split of {config.data.dataset}; allowed: '
                          f'{sorted(builder.info.splits.keys())}.')


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
  """
  b = per_process_batch(global_batch, process_count)
  if indices is None:
    total = _split_size(config, split) if num_examples is None else num_examples
    lo, hi = shard_bounds(total, process_index, process_count)
    ds = _read_range(config, split, lo, hi) if hi > lo else None
    positions = np.arange(lo, hi, dtype=np.int64)
  else:
    positions = np.asarray(indices, np.int64)
    total = len(positions)
    if np.any(np.diff(positions) <= 0) or (total and positions[0] < 0):
      raise ValueError('eval_batches: indices must be sorted, distinct and >= 0.')
    lo, hi = shard_bounds(total, process_index, process_count)
    positions = positions[lo:hi]
    ds = None
    if len(positions):
      first, last = int(positions[0]), int(positions[-1]) + 1
      keep = np.zeros((last - first,), bool)
      keep[positions - first] = True
      keep = tf.constant(keep)
      ds = _read_range(config, split, first, last).enumerate().filter(
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
