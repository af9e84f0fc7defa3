"""Labelled training data for linear evaluation and fine-tuning: one crop + flip view per example.

The paper's protocol (appendix B.5/B.6, official `preprocess_for_train` with colour strength 0 and
no blur): random resized crop and horizontal flip only (`config.aug.crop` / `config.aug.flip` /
`config.aug.crop_area_min` still apply, so the digits demo can keep flips off).

Label fractions: TFDS ships ImageNet's official 1% / 10% subsets as `imagenet2012_subset/1pct` and
`/10pct` (use them as config.data.dataset). For any other data set, `config.data.label_fraction`
keeps a deterministic, class-balanced subset: round(fraction * n_c) examples (at least 1) of every
class c, chosen by a fixed seed that does not depend on config.seed, so every run and every
process sees the same labelled examples.

The stream follows input_pipeline's determinism contract (input_pipeline.training_stream): a pure
function of (config.seed, step, process layout), resumable at any step.
"""

import functools
from typing import Iterator, Optional

import ml_collections
import numpy as np
import tensorflow as tf

from simclr_jax.data import augment
from simclr_jax.data import input_pipeline

LABEL_FRACTION_SEED = 20200213  # Fixed: the labelled subset is part of the data set, not the run.
_SHUFFLE_SALT = 3_000_017
_AUG_SALT = 4_000_037


def label_subset(labels: np.ndarray, fraction: float) -> np.ndarray:
  """Sorted indices of a class-balanced subset: round(fraction * n_c) (>= 1) of each class c."""
  labels = np.asarray(labels)
  if not 0 < fraction <= 1:
    raise ValueError(f'config.data.label_fraction={fraction!r} must be in (0, 1].')
  if fraction == 1:
    return np.arange(len(labels))
  keep = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    rng = np.random.RandomState([LABEL_FRACTION_SEED, int(c)])
    k = max(1, int(round(fraction * len(idx))))
    keep.append(rng.permutation(idx)[:k])
  return np.sort(np.concatenate(keep))


def train_dataset(config: ml_collections.ConfigDict, *, process_index: int, process_count: int,
                  start_step: int = 0, indices: Optional[np.ndarray] = None) -> tf.data.Dataset:
  """Infinite stream of host-local batches {'image': uint8 [b,S,S,3], 'label': int32 [b],
  'seq': int64 [b]} (input_pipeline.skip_undecodable).

  `indices`: kept examples of the whole train split in stored order (None = all). The order
  follows input_pipeline.training_stream (global for in-memory splits, file shards otherwise).
  """
  a, size = config.aug, config.data.image_size
  b = input_pipeline.per_process_batch(config.train.batch_size, process_count)
  ds, stream_id = input_pipeline.training_stream(
      config, config.data.train_split, process_index=process_index, process_count=process_count,
      start_step=start_step, shuffle_salt=_SHUFFLE_SALT, indices=indices)
  seed = config.seed

  def view(t, ex):
    s = tf.stack([tf.constant(seed * _AUG_SALT + stream_id, tf.int64), tf.cast(t, tf.int64)])
    image = augment.preprocess_for_train(
        ex['image'], size, size, seed=s, color_jitter_strength=0.0, use_blur=False,
        crop=a.crop, flip=a.flip, area_min=a.crop_area_min)
    return {'image': tf.cast(tf.round(image * 255.0), tf.uint8), 'label': ex['label']}

  ds = input_pipeline.skip_undecodable(ds, view, first=start_step * b)
  return ds.batch(b, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def feature_batches(features: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                    start_step: int = 0, process_index: int = 0, process_count: int = 1
                    ) -> Iterator[dict[str, np.ndarray]]:
  """Infinite host-local {'features', 'label'} batches: epoch e is a permutation seeded by
  (seed, e); global batch t is elements [t*B, (t+1)*B) of the concatenated epochs (resumable,
  like the image stream), and this process yields its rows [p*B/P, (p+1)*B/P) of it, so each
  example appears once per global batch whatever the number of processes."""
  b = input_pipeline.per_process_batch(batch_size, process_count)
  n = len(labels)
  if n < batch_size:
    raise ValueError(f'config.train.batch_size={batch_size} exceeds the {n} labelled examples.')

  @functools.lru_cache(maxsize=3)
  def perm(e):
    return np.random.RandomState([seed, e]).permutation(n)

  t = start_step
  while True:
    e, p = divmod(t * batch_size, n)
    sel = np.concatenate([perm(e), perm(e + 1)])[p:p + batch_size]  # B <= n: two epochs at most.
    sel = sel[process_index * b:(process_index + 1) * b]
    yield {'features': features[sel], 'label': labels[sel]}
    t += 1
