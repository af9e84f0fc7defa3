"""Which example each process reads at each training step: the order of the training stream.

Every stream yields (t, example) pairs, endlessly, from step `start_step` on; `t` seeds the
example's augmentation. Two sources, chosen by where the split lives:

- In host memory (the embedded set, or a TFDS split with `data.cache=True`): every process holds
  the whole split. Epoch e is ONE global permutation seeded by (seed, e); global batch s is
  elements [s*B, (s+1)*B) of the concatenated epochs, and process p takes rows [p*b, (p+1)*b) of
  it (b = B/P). `t` is the element's global position. So the global batch at step s is bitwise the
  same for 1, 2 or 128 processes, and a resumed run may change the slice size.
- In files (a TFDS split with `data.cache=False`, e.g. ImageNet): each process reads its own
  files (file i goes to process i mod P). Every epoch the process reshuffles its file order from
  (seed, process, epoch), interleaves `INTERLEAVE` files record by record and permutes blocks of
  `data.shuffle_buffer` records. `t` counts this process's elements. The global batch depends on
  the process count (each host reads 1/P of the files: no host reads the whole split). Resume
  skips whole epochs by arithmetic and the rest of one epoch as serialized records: nothing
  skipped is parsed or decoded.

All randomness is stateless (tf.random.stateless_*), so TF's global seed never enters.
"""

import functools
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from simclr_jax.data import errors

INTERLEAVE = 16  # Files read at once by one process (record by record, deterministic order).


def _epoch_permutation(n: int, salt: int, epoch) -> tf.Tensor:
  """A permutation of range(n), a pure function of (salt, epoch)."""
  key = tf.random.stateless_uniform(
      [n], seed=tf.stack([tf.cast(salt, tf.int64), tf.cast(epoch, tf.int64) * 2**20]))
  return tf.argsort(key)


def global_positions(epoch: int, n: int, *, global_batch: int, b: int, process_index: int,
                     first: int) -> np.ndarray:
  """Global positions g >= first of epoch `epoch` (g in [epoch*n, (epoch+1)*n)) that fall in
  process_index's rows of their global batch: (g mod global_batch) // b == process_index."""
  g = np.arange(epoch * n, (epoch + 1) * n, dtype=np.int64)
  keep = ((g % global_batch) // b == process_index) & (g >= first)
  return g[keep]


def memory_stream(examples: dict, *, global_batch: int, process_index: int, process_count: int,
                  start_step: int, salt: int) -> tf.data.Dataset:
  """(t, example) for this process's rows of the global order over in-memory `examples`.

  `examples`: {'image': np.ndarray [n, ...] (uint8 pixels, or encoded bytes as an object
  array), 'label': int32 [n]} of the whole split (or the kept subset), identical on every process.
  """
  n = len(examples['label'])
  if n < global_batch:
    raise errors.DataConfigError(f'config.train.batch_size={global_batch} exceeds the {n} '
                                 'training examples.')
  b = global_batch // process_count
  first = start_step * global_batch
  perm = functools.lru_cache(maxsize=2)(
      lambda e: _epoch_permutation(n, salt, e).numpy())

  def steps():
    e = first // n
    while True:
      g = global_positions(e, n, global_batch=global_batch, b=b, process_index=process_index,
                           first=first)
      idx = perm(e)[g - e * n]
      for lo in range(0, len(g), 4096):  # Bounded chunks: epochs may hold millions of rows.
        sel = idx[lo:lo + 4096]
        yield g[lo:lo + 4096], {k: v[sel] for k, v in examples.items()}
      e += 1

  image = examples['image']
  image_spec = (tf.TensorSpec([None], tf.string) if image.dtype == object else
                tf.TensorSpec((None,) + image.shape[1:], tf.as_dtype(image.dtype)))
  ds = tf.data.Dataset.from_generator(
      steps, output_signature=(tf.TensorSpec([None], tf.int64),
                               {'image': image_spec, 'label': tf.TensorSpec([None], tf.int32)}))
  return ds.unbatch()


def file_stream(files: list, *, b: int, process_index: int, process_count: int,
                start_step: int, salt: int, shuffle_buffer: int,
                parse: Callable[[tf.Tensor], dict], keep: Optional[np.ndarray] = None
                ) -> tuple[tf.data.Dataset, int]:
  """(t, example) from this process's files; returns the stream and its examples per epoch.

  `files`: the split's file instructions (filename, skip, take) in stored order; `parse`:
  serialized record -> example (run after the resume skip, so skipped records are never
  parsed); `keep`: optional bool [examples in split] mask (label fractions), by stored position.
  """
  if len(files) < process_count:
    raise errors.DataConfigError(
        f'the split has {len(files)} file(s), fewer than the {process_count} processes that '
        'each read their own files: set config.data.cache=True (the split then sits in every '
        "host's memory), or prepare the data set with more shards.")
  takes = np.array([f.take for f in files], np.int64)
  offsets = np.concatenate([[0], np.cumsum(takes)[:-1]])
  mine = np.arange(process_index, len(files), process_count)
  if keep is None:
    n = int(takes[mine].sum())
  else:
    n = int(sum(keep[offsets[i]:offsets[i] + takes[i]].sum() for i in mine))
  if n < b:
    raise errors.DataConfigError(
        f'each of the {process_count} process(es) needs {b} examples per batch '
        f'(config.train.batch_size) but process {process_index} holds {n}.')
  names = tf.constant([files[i].filename for i in mine])
  skips = tf.constant([files[i].skip for i in mine], tf.int64)
  counts = tf.constant(takes[mine])
  starts = tf.constant(offsets[mine])
  keep_t = None if keep is None else tf.constant(keep)
  own_salt = salt + process_index
  block = min(shuffle_buffer, n)

  def read(name, skip, take, start):
    records = tf.data.TFRecordDataset(name).skip(skip).take(take)
    return records.enumerate(start=start)  # (position in the split, serialized record)

  def epoch(e):
    order = _epoch_permutation(len(mine), own_salt + 2**31, e)  # Not the blocks' seed.
    files_e = tf.data.Dataset.from_tensor_slices(tuple(tf.gather(x, order) for x in
                                                       (names, skips, counts, starts)))
    ds = files_e.interleave(read, cycle_length=min(INTERLEAVE, len(mine)), block_length=1,
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if keep_t is not None:
      ds = ds.filter(lambda i, _: tf.gather(keep_t, i))
    return block_shuffle(ds.map(lambda _, rec: rec), block, [own_salt, e])

  first = start_step * b
  first_epoch = first // n
  ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch)
  ds = ds.skip(first - first_epoch * n).enumerate(start=first)
  return ds.map(lambda t, rec: (t, parse(rec)), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True), n


def block_shuffle(ds: tf.data.Dataset, block: int, seed, prefetch: bool = True
                  ) -> tf.data.Dataset:
  """Permutes consecutive blocks of `block` elements of `ds` (dense tensors) with stateless
  permutations seeded by (seed, block index). Unlike Dataset.shuffle(seed=...), whose order also
  takes TF's global seed, the order is a function of `seed` alone. `prefetch`: the next block is
  read while this one flows downstream (without it, nothing flows while a block of ImageNet's
  10k records is read; bench/input_pipeline.py --sections=block_shuffle measures it)."""
  seed = tf.cast(tf.stack(seed), tf.int64)

  def permute(j, blk):
    m = tf.shape(tf.nest.flatten(blk)[0])[0]
    key = tf.random.stateless_uniform([m], seed=tf.stack([seed[0], seed[1] * 2**20 + j]))
    perm = tf.argsort(key)
    return tf.nest.map_structure(lambda x: tf.gather(x, perm), blk)

  ds = ds.batch(block).enumerate().map(permute)
  return (ds.prefetch(1) if prefetch else ds).unbatch()
