"""Where examples come from: an in-package set (data/embedded.py's registry), a folder of images
(data/folder.py) or a TFDS builder (a `python -m simclr_jax.prepare` output is one), split sizes
and labels, and each process's contiguous share of a split read in stored order.

Everything here is host-side and process-explicit (process_index / process_count are
arguments, never read from JAX). Stored order matters: kNN-bank indices, label fractions and
eval positions all refer to it (stored_order). data/input_pipeline.py turns these sources into
training views and evaluation batches.
"""

import dataclasses
import functools
from typing import Optional

import ml_collections
import numpy as np
import tensorflow as tf

from simclr_jax.data import augment
from simclr_jax.data import embedded
from simclr_jax.data import errors
from simclr_jax.data import folder

DataConfigError = errors.DataConfigError
HEAD_LABELS = 256  # Labels get_info reads from the start of the probe and eval splits.


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


def tfds_builder(config: ml_collections.ConfigDict):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  d = config.data
  try:
    builder = tfds.builder(d.dataset, data_dir=d.data_dir)
  except Exception as e:  # tfds raises DatasetNotFoundError with a long list.
    raise DataConfigError(f'config.data.dataset={d.dataset!r} is neither one of '
                          f'{sorted(embedded.SETS)} nor a TFDS builder: '
                          f'{str(e).splitlines()[0]}') from e
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
  if embedded.is_embedded(d.dataset):
    data_set = embedded.get(d.dataset)
    for key in keys:
      if d[key] not in data_set.SPLITS:
        raise DataConfigError(f'config.data.{key}={d[key]!r} is not a split of {d.dataset}; '
                              f'allowed: {sorted(data_set.SPLITS)}.')
    sizes = {s: len(data_set.load(s)[1])
             for s in (d.train_split, d.eval_split, probe_split(config))}
    info = DatasetInfo(d.dataset, sizes[d.train_split], sizes[d.eval_split], data_set.NUM_CLASSES,
                       sizes[probe_split(config)])
    _check_head_labels(config, info.num_classes)
    return info
  if folder.is_folder(d.dataset):
    loaded = {key: _folder_split(config, d[key], f'config.data.{key}') for key in keys}
    probe = loaded.get('probe_train_split', loaded['train_split'])
    info = DatasetInfo(d.dataset, len(loaded['train_split'].files),
                       len(loaded['eval_split'].files), len(probe.classes), len(probe.files))
    _check_head_labels(config, info.num_classes)
    return info
  builder = tfds_builder(config)
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
  if embedded.is_embedded(d.dataset) or folder.is_folder(d.dataset):
    labels = load_split(config, split)['label']
    if limit is not None:
      return labels[:limit]
    lo, hi = shard_bounds(len(labels), process_index, process_count)
    return labels[lo:hi]
  builder = tfds_builder(config)
  check_split(config, builder, split)
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
  """[start, end) of this process's contiguous share of n examples (sizes differ by at most 1).

  Not tfds.split_for_jax_process: that returns a split string for the current JAX process,
  while callers here need the positions as numbers (kNN-bank indices, eval 'index' rows) for
  any process, the embedded set included, without JAX."""
  return n * process_index // process_count, n * (process_index + 1) // process_count


def source(config: ml_collections.ConfigDict, split: str, process_index: int = 0,
           process_count: int = 1) -> tuple[tf.data.Dataset, int, int]:
  """This process's share of `split` as {'image': uint8 [h,w,3], 'label': int32}, in the split's
  stored order (no shuffling), with the share's size and the whole split's size."""
  n = split_size(config, split)
  lo, hi = shard_bounds(n, process_index, process_count)
  return read_range(config, split, lo, hi), hi - lo, n


def split_size(config: ml_collections.ConfigDict, split: str) -> int:
  if embedded.is_embedded(config.data.dataset) or folder.is_folder(config.data.dataset):
    return len(load_split(config, split)['label'])
  builder = tfds_builder(config)
  check_split(config, builder, split)
  return builder.info.splits[split].num_examples


def read_range(config: ml_collections.ConfigDict, split: str, lo: int, hi: int
                ) -> tf.data.Dataset:
  """Examples [lo, hi) of `split` in stored order: {'image': uint8 [h,w,3], 'label': int32}."""
  if embedded.is_embedded(config.data.dataset):
    images, labels = embedded.get(config.data.dataset).load(split)
    return tf.data.Dataset.from_tensor_slices({'image': images[lo:hi], 'label': labels[lo:hi]})
  if folder.is_folder(config.data.dataset):
    ex = load_split(config, split)
    ds = tf.data.Dataset.from_tensor_slices({'image': tf.constant(list(ex['image'][lo:hi]),
                                                                  tf.string),
                                             'label': ex['label'][lo:hi]})
    return ds.map(decoded, num_parallel_calls=tf.data.AUTOTUNE)
  ds = stored_order(tfds_builder(config), f'{split}[{lo}:{hi}]')

  def decode(ex):
    image = tf.io.decode_image(ex['image'], channels=3, expand_animations=False)
    return {'image': image, 'label': tf.cast(ex['label'], tf.int32)}

  return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def parse_record(features, record: tf.Tensor, decode: bool = True) -> dict:
  from tensorflow_datasets import decode as tfds_decode  # pylint: disable=g-import-not-at-top
  ex = features.deserialize_example(record, decoders={'image': tfds_decode.SkipDecoding()})
  return decoded({'image': ex['image'], 'label': ex['label']}, decode)


def decoded(ex: dict, decode: bool = True) -> dict:
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
  if embedded.is_embedded(d.dataset):
    images, labels = embedded.get(d.dataset).load(split)
    return {'image': images, 'label': labels}
  if folder.is_folder(d.dataset):
    s = _folder_split(config, split)
    return {'image': s.images, 'label': s.labels}
  check_split(config, tfds_builder(config), split)
  return _load_tfds_split(d.dataset, d.data_dir, split)


def check_split(config, builder, split: str) -> None:
  if split not in builder.info.splits:
    raise DataConfigError(f'split {split!r} (config.data.train_split / eval_split) is not a '
                          f'split of {config.data.dataset}; allowed: '
                          f'{sorted(builder.info.splits.keys())}.')


def _folder_split(config: ml_collections.ConfigDict, split: str,
                  key: str = 'config.data.train_split / eval_split') -> folder.Split:
  """A split of a `folder:DIR` data set, decoded and checked once per process (cached); images
  smaller than the crop (data.image_size) are skipped."""
  return folder.load_split(config.data.dataset, split, config.data.image_size, key)


def folder_splits(config: ml_collections.ConfigDict) -> list:
  """The folder.Split objects of the splits a `folder:DIR` config uses (train, eval, probe), in
  that order without repeats; [] for any other data set."""
  d = config.data
  if not folder.is_folder(d.dataset):
    return []
  names = dict.fromkeys((d.train_split, d.eval_split, probe_split(config)))
  return [_folder_split(config, name) for name in names]
