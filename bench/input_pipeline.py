"""Host-side throughput of the SimCLR input pipeline's augmentation (tf.data, CPU).

    python bench/input_pipeline.py [--seconds=4] [--rounds=2]

Measures images/s (one image = two augmented views) of exactly the function the training pipeline
maps over its stream (input_pipeline.make_views_fn), with the tf.data private thread pool limited
to 1 and 2 threads, for:
- CIFAR: 32x32 uint8 images in memory; crop + flip + colour jitter s=0.5, no blur.
- ImageNet: synthetic 400x350 JPEGs (smooth colour fields + noise, quality 90, 4:2:0 chroma like
  ImageNet's); crop + resize to 224, flip, colour jitter s=1.0, blur on:
  (a) as before this change: decode the whole image, convert it to float, crop it twice;
  decode the whole image once and crop the uint8 pixels twice (jpeg_decode 'whole');
  (b) decode_and_crop: the crop windows come from the JPEG header and only they are decoded,
      each view its own window ('per_view') or the window holding both crops once ('union',
      input_pipeline.JPEG_DECODE, what TFDS training does now);
  (c) the same with config.aug.on_device: the host only decodes, crops, resizes and flips;
      colour, grayscale and blur run in the train step on the accelerator, not measured here.
  Plus (b) with float32 views (the augmentation's own output) against the uint8 views shipped.
Every row is measured once per round, rounds interleaved, and the median is shown: the machine
may be shared (the load average is printed with the table).

    python bench/input_pipeline.py --sections=block_shuffle

The file stream's block shuffle (data/streams.block_shuffle) with and without reading the next
block ahead: TFRecord files of ImageNet-sized JPEGs -> parse -> block shuffle -> decode + resize
(the downstream work), images/s. Without prefetch nothing flows downstream while a block is
read; with it, reading overlaps the decoding. Read from local files (page cache: reading is
cheap) and with a simulated storage latency per record (what a bucket adds).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax.data import streams  # pylint: disable=g-import-not-at-top,wrong-import-position

BATCH = 32


def cifar_config():
  c = default.get_config()
  c.data.image_size = 32
  c.aug.crop, c.aug.crop_area_min, c.aug.flip = True, 0.08, True
  c.aug.color_jitter_strength, c.aug.use_blur = 0.5, False
  return c


def imagenet_config():
  c = cifar_config()
  c.data.image_size = 224
  c.aug.color_jitter_strength, c.aug.use_blur = 1.0, True
  return c


def cifar_source(n=1024):
  rng = np.random.RandomState(0)
  base = rng.randint(0, 256, (n, 8, 8, 3)).astype(np.float32)
  images = tf.cast(tf.image.resize(base, [32, 32], 'bicubic') * 0.8
                   + rng.randint(0, 50, (n, 32, 32, 3)), tf.uint8)
  return tf.data.Dataset.from_tensor_slices(images), lambda x: x


def imagenet_source(n=32, h=350, w=400):
  rng = np.random.RandomState(0)
  jpegs = []
  for _ in range(n):
    smooth = tf.image.resize(rng.uniform(0, 255, (6, 7, 3)).astype(np.float32), [h, w], 'bicubic')
    img = tf.cast(tf.clip_by_value(smooth + rng.normal(0, 12, (h, w, 3)), 0, 255), tf.uint8)
    jpegs.append(tf.io.encode_jpeg(img, quality=90).numpy())
  decode = lambda s: tf.io.decode_jpeg(s, channels=3)
  return tf.data.Dataset.from_tensor_slices(jpegs), decode, np.mean([len(j) for j in jpegs])


def _float_image(x):
  return tf.image.convert_image_dtype(x, tf.float32)


def measure(config, source, prepare, threads, seconds, dtype=tf.uint8, jpeg_decode='union'):
  """images/s and bytes per image out of views_fn(t, prepare(x)) over `source` in tf.data."""
  views_fn = input_pipeline.make_views_fn(config, dtype=dtype, jpeg_decode=jpeg_decode)
  ds = source.repeat().enumerate().map(lambda t, x: views_fn(t, prepare(x)),
                                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  ds = ds.batch(BATCH).prefetch(4)
  opts = tf.data.Options()
  opts.threading.private_threadpool_size = threads
  opts.threading.max_intra_op_parallelism = 1
  ds = ds.with_options(opts)
  it = iter(ds)
  first = next(it)  # Warm up (tracing, buffers, autotuning) for a quarter of the timed period.
  nbytes = first.numpy().nbytes // BATCH
  t0 = time.perf_counter()
  while time.perf_counter() - t0 < seconds / 4:
    next(it)
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    next(it)
    n += BATCH
  return n / (time.perf_counter() - t0), nbytes


def on_device_config():
  c = imagenet_config()
  c.aug.on_device = True
  return c


def write_records(directory, jpegs, files=4, per_file=1500):
  """TFRecord files of tf.train.Examples holding the JPEGs (cycled), like a TFDS split."""
  paths = []
  for f in range(files):
    path = os.path.join(directory, f'train.tfrecord-{f:05d}')
    with tf.io.TFRecordWriter(path) as w:
      for i in range(per_file):
        jpeg = jpegs[(f * per_file + i) % len(jpegs)]
        w.write(tf.train.Example(features=tf.train.Features(feature={
            'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg]))}))
                .SerializeToString())
    paths.append(path)
  return paths


def measure_block_shuffle(paths, block, prefetch, latency_ms, seconds, map_parallelization):
  """images/s out of files -> parse -> block_shuffle -> decode + resize 224, batches of 32."""
  def slow(recs):  # Storage latency, waited for (no CPU) per chunk of 100 records.
    def wait(x):
      time.sleep(latency_ms * 100 / 1e3)
      return x
    return tf.py_function(wait, [recs], tf.string)

  ds = tf.data.Dataset.from_tensor_slices(paths).interleave(
      tf.data.TFRecordDataset, cycle_length=len(paths), block_length=1)
  if latency_ms:
    ds = ds.batch(100).map(slow).unbatch()
  ds = ds.map(lambda r: tf.io.parse_single_example(
      r, {'image': tf.io.FixedLenFeature([], tf.string)})['image'])
  ds = streams.block_shuffle(ds.repeat(), block, [0, 0], prefetch=prefetch)
  ds = ds.map(lambda x: tf.image.resize(tf.io.decode_jpeg(x, channels=3), [224, 224]),
              num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH).prefetch(2)
  opts = tf.data.Options()
  opts.experimental_optimization.map_parallelization = map_parallelization
  it = iter(ds.with_options(opts))
  next(it)
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    next(it)
    n += BATCH
  return n / (time.perf_counter() - t0)


def block_shuffle_section(args):
  import tempfile  # pylint: disable=g-import-not-at-top
  jpegs = [tf.io.encode_jpeg(tf.cast(tf.random.stateless_uniform(
      [350, 400, 3], [i, 0], 0, 255), tf.uint8), quality=90).numpy() for i in range(64)]
  block = 2000
  with tempfile.TemporaryDirectory() as d:
    paths = write_records(d, jpegs)
    print(f'Block shuffle: 4 TFRecord files, 6,000 records of {np.mean([len(j) for j in jpegs]) / 1e3:.0f} kB '
          f'(noise JPEGs, 400x350), blocks of {block:,} (ImageNet configs: 10,000).')
    # map_parallelization (a tf.data graph rewrite, on by default) turns the block permutation
    # into a parallel map, which already reads ahead; with it off, only the prefetch does.
    cases = [(latency, opt, prefetch) for latency in (0.0, 0.2) for opt in (True, False)
             for prefetch in (False, True)]
    rates = {c: [] for c in cases}
    for r in range(args.rounds):
      for c in cases:
        rates[c].append(measure_block_shuffle(paths, block, c[2], c[0], args.seconds, c[1]))
        print(f'  round {r + 1}: latency {c[0]} ms, map_parallelization {c[1]}, prefetch '
              f'{c[2]}: {rates[c][-1]:.1f} images/s', flush=True)
  header = (f'{"storage latency / record":<26} {"map_parallelization":>19} {"prefetch":>8} '
            f'{"images/s":>9} {"vs no prefetch":>14}')
  print('\n' + header + '\n' + '-' * len(header))
  for latency, opt, prefetch in cases:
    rate = float(np.median(rates[(latency, opt, prefetch)]))
    base = float(np.median(rates[(latency, opt, False)]))
    print(f'{f"{latency} ms":<26} {str(opt):>19} {str(prefetch):>8} {rate:>9.1f} '
          f'{rate / base:>13.2f}x')


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--seconds', type=float, default=4.0)
  parser.add_argument('--rounds', type=int, default=2,
                      help='every row is measured once per round, rounds interleaved; median shown')
  parser.add_argument('--sections', default='augment,block_shuffle',
                      help='comma-separated: augment (the augmentation table), block_shuffle')
  args = parser.parse_args()
  tf.config.set_visible_devices([], 'GPU')
  sections = args.sections.split(',')
  if 'block_shuffle' in sections:
    block_shuffle_section(args)
  if 'augment' in sections:
    augment_section(args)


def augment_section(args):
  print(f'TF {tf.__version__}; os.cpu_count()={os.cpu_count()}; '
        f'load average before: {os.getloadavg()[0]:.2f}; {args.seconds:.0f} s per row and round, '
        f'{args.rounds} rounds (median shown), batches of {BATCH}.')
  cifar, pixels = cifar_source()
  inet, decode, jpeg_bytes = imagenet_source()
  print(f'ImageNet source: 400x350 JPEGs (4:2:0), mean {jpeg_bytes / 1e3:.1f} kB.\n')
  # ImageNet prepare functions: what reaches input_pipeline.make_views_fn.
  as_before = lambda x: _float_image(decode(x))  # Old path: whole image to float, crop twice.
  encoded = lambda x: x  # Bytes: decoded by the augmentation (jpeg_decode says how).
  full, dev = 'ImageNet JPEG->224 s=1.0 + blur, uint8', 'ImageNet on_device (host: crop+flip)'
  inet_cases = [(f'{full}: (a) as before', imagenet_config(), as_before, 'whole'),
                (f'{full}: decode whole once, crop twice', imagenet_config(), decode, 'whole'),
                (f'{full}: (b) decode_and_crop per view', imagenet_config(), encoded, 'per_view'),
                (f'{full}: (b) decode_and_crop union once', imagenet_config(), encoded, 'union'),
                (f'{dev}: decode whole once', on_device_config(), decode, 'whole'),
                (f'{dev}: (c) decode_and_crop per view', on_device_config(), encoded, 'per_view'),
                (f'{dev}: (c) decode_and_crop union once', on_device_config(), encoded, 'union')]
  cases = [('CIFAR 32px crop+flip+jitter s=0.5, uint8', cifar_config(), cifar, pixels, threads,
            tf.uint8, 'union') for threads in (1, 2)]
  cases += [(name, config, inet, prepare, threads, tf.uint8, mode)
            for name, config, prepare, mode in inet_cases for threads in (1, 2)]
  cases.append((f'{full}: union once, float32 out', imagenet_config(), inet, encoded, 2,
                tf.float32, 'union'))
  rates = {i: [] for i in range(len(cases))}
  sizes = {}
  for r in range(args.rounds):
    for i, (name, config, src, prepare, threads, dtype, mode) in enumerate(cases):
      rate, sizes[i] = measure(config, src, prepare, threads, args.seconds, dtype, mode)
      rates[i].append(rate)
      print(f'  round {r + 1}: {name} / {threads} thread(s): {rate:.1f} images/s', flush=True)
  header = (f'{"recipe":<72} {"threads":>7} {"images/s":>9} {"img/s/core":>10} '
            f'{"bytes/image":>11} {"MB/s out":>8}')
  print('\n' + header)
  print('-' * len(header))
  per_core = {}
  for i, (name, _, _, _, threads, _, _) in enumerate(cases):
    rate = float(np.median(rates[i]))
    per_core[(name, threads)] = rate / threads
    print(f'{name:<72} {threads:>7} {rate:>9.1f} {rate / threads:>10.1f} {sizes[i]:>11,} '
          f'{rate * sizes[i] / 1e6:>8.1f}')
  print(f'\nload average after: {os.getloadavg()[0]:.2f}')
  best = lambda key: max(v for (n, _), v in per_core.items() if key in n)
  before = best('(a) as before')
  for label, key in (('host does everything, best of (b)', '(b) decode_and_crop'),
                     ('aug.on_device, best of (c)', '(c) decode_and_crop')):
    rate = best(key)
    print(f'{label}: {rate:.1f} images/s per host core, {rate / before:.2f}x (a) ({before:.1f}); '
          f'{185 / rate:.2f} host cores per accelerator core at 185 images/s (paper, TPU v3).')

if __name__ == '__main__':
  main()
