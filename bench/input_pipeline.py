"""Host-side throughput of the SimCLR input pipeline's augmentation (tf.data, CPU).

    python bench/input_pipeline.py [--seconds=8]

Measures images/s (one image = two augmented views) of exactly the function the training pipeline
maps over its stream (input_pipeline.make_views_fn) for two recipes, with the tf.data private
thread pool limited to 1 and 2 threads:
- CIFAR: 32x32 uint8 images in memory; crop + flip + colour jitter s=0.5, no blur.
- ImageNet: synthetic 400x350 JPEGs (smooth colour fields + noise, quality 90) decoded in the
  pipeline; crop + resize to 224, flip, colour jitter s=1.0, blur on (here blur runs on the host;
  the official code blurs on the accelerator).
Then float32 views (the augmentation's own output) against the uint8 views the pipeline ships.
The machine may be shared: the load average is printed with the table.
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


def measure(config, source, decode, threads, seconds, dtype=tf.uint8):
  views_fn = input_pipeline.make_views_fn(config, dtype=dtype)
  ds = source.repeat().enumerate().map(lambda t, x: views_fn(t, decode(x)),
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


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--seconds', type=float, default=8.0)
  args = parser.parse_args()
  tf.config.set_visible_devices([], 'GPU')
  print(f'TF {tf.__version__}; os.cpu_count()={os.cpu_count()}; '
        f'load average before: {os.getloadavg()[0]:.2f}; {args.seconds:.0f} s per row, '
        f'batches of {BATCH}.')
  cifar = cifar_source()
  inet_ds, inet_decode, jpeg_bytes = imagenet_source()
  print(f'ImageNet source: 400x350 JPEGs, mean {jpeg_bytes / 1e3:.1f} kB.\n')
  rows = []
  header = (f'{"recipe":<44} {"threads":>7} {"images/s":>9} {"img/s/core":>10} '
            f'{"bytes/image":>11} {"MB/s out":>8}')
  print(header)
  print('-' * len(header))
  cases = [('CIFAR 32px crop+flip+jitter s=0.5, uint8', cifar_config(), cifar, 1, tf.uint8),
           ('CIFAR 32px crop+flip+jitter s=0.5, uint8', cifar_config(), cifar, 2, tf.uint8),
           ('ImageNet JPEG->224 s=1.0 + blur, uint8', imagenet_config(),
            (inet_ds, inet_decode), 1, tf.uint8),
           ('ImageNet JPEG->224 s=1.0 + blur, uint8', imagenet_config(),
            (inet_ds, inet_decode), 2, tf.uint8),
           ('ImageNet JPEG->224 s=1.0 + blur, float32', imagenet_config(),
            (inet_ds, inet_decode), 2, tf.float32),
           ('CIFAR 32px crop+flip+jitter s=0.5, float32', cifar_config(), cifar, 2, tf.float32)]
  for name, config, (src, decode), threads, dtype in cases:
    rate, nbytes = measure(config, src, decode, threads, args.seconds, dtype)
    rows.append((name, threads, rate))
    print(f'{name:<44} {threads:>7} {rate:>9.1f} {rate / threads:>10.1f} {nbytes:>11,} '
          f'{rate * nbytes / 1e6:>8.1f}', flush=True)
  print(f'\nload average after: {os.getloadavg()[0]:.2f}')
  inet = max(r for n, t, r in rows if n.startswith('ImageNet') and 'uint8' in n and t == 1)
  inet2 = max(r / 2 for n, t, r in rows if n.startswith('ImageNet') and 'uint8' in n and t == 2)
  per_core = max(inet, inet2)
  for target in (185, 370):
    print(f'ImageNet recipe at {target} images/s per accelerator core (paper: 185 per TPU v3 core): '
          f'{target / per_core:.1f} host cores per accelerator core at {per_core:.1f} '
          f'images/s per host core.')


if __name__ == '__main__':
  main()
