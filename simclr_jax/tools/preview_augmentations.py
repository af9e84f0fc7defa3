"""Writes a PNG grid of SimCLR training views, to check the augmentation settings by eye.

    python -m simclr_jax.tools.preview_augmentations --config=configs/default.py --out=grid.png \
        [--num_images=8 --num_pairs=3] [--config.aug.color_jitter_strength=1.0 ...]

Each row is one image of the training split (evenly spaced through its stored order): first the eval view (centre
crop + resize, as evaluation sees it), then `num_pairs` pairs of training views made by exactly the
function the training pipeline maps over its stream (input_pipeline.make_views_fn, with the config's
aug settings and seed), including the uint8 rounding that the pipeline ships. Tiles are enlarged
by an integer factor (nearest neighbour) so small images stay visible.
"""

import math

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

_CONFIG = config_flags.DEFINE_config_file('config', None, 'ml_collections config file.',
                                          lock_config=True)
_OUT = flags.DEFINE_string('out', 'augmentations.png', 'Output PNG path.')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 8, 'Rows: images of the training split.')
_NUM_PAIRS = flags.DEFINE_integer('num_pairs', 3, 'Pairs of training views per image.')
_TILE = flags.DEFINE_integer('tile', 0, 'Display size of one tile in pixels, a multiple of '
                             'image_size (0: the smallest multiple >= 96).')

PAD = 4  # Pixels between tiles within a pair and around the grid.
GAP = 12  # Pixels between the eval view and the first pair, and between pairs.
BACKGROUND = 255


def scale_for(image_size: int, tile: int = 0) -> int:
  if tile:
    if tile % image_size:
      raise ValueError(f'--tile={tile} must be a multiple of image_size={image_size}.')
    return tile // image_size
  return max(1, math.ceil(96 / image_size))


def grid_size(num_images: int, num_pairs: int, tile: int) -> tuple[int, int]:
  """(height, width) in pixels of the grid for tiles of `tile` pixels."""
  width = 2 * PAD + (1 + 2 * num_pairs) * tile + num_pairs * (GAP + PAD)
  height = 2 * PAD + num_images * tile + (num_images - 1) * PAD
  return height, width


def make_tiles(config, num_images: int, num_pairs: int) -> tuple[np.ndarray, np.ndarray]:
  """(eval views uint8 [n, S, S, 3], training views uint8 [n, num_pairs, 2, S, S, 3])."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import sources  # pylint: disable=g-import-not-at-top
  src, n, _ = sources.source(config, config.data.train_split, 0, 1)
  if n < num_images:
    raise ValueError(f'--num_images={num_images} but the split holds only {n} images.')
  views_fn = input_pipeline.make_views_fn(config)

  def tiles(i, ex):
    # Stream positions i * num_pairs + j: distinct, so each pair gets its own seeds.
    pairs = tf.stack([views_fn(i * num_pairs + j, ex['image']) for j in range(num_pairs)])
    return input_pipeline.eval_image(config, ex['image']), pairs

  # Evenly spaced through the split, so that sorted splits still show several classes.
  ds = src.shard(n // num_images, 0).take(num_images).enumerate().map(tiles).batch(num_images)
  originals, pairs = next(ds.as_numpy_iterator())
  return originals, pairs


def render(originals: np.ndarray, pairs: np.ndarray, scale: int) -> np.ndarray:
  """The grid as uint8 [H, W, 3]."""
  n, num_pairs = pairs.shape[:2]
  tile = originals.shape[1] * scale
  height, width = grid_size(n, num_pairs, tile)
  grid = np.full((height, width, 3), BACKGROUND, np.uint8)
  up = lambda x: np.kron(x, np.ones((scale, scale, 1), np.uint8))
  for r in range(n):
    y = PAD + r * (tile + PAD)
    x = PAD
    grid[y:y + tile, x:x + tile] = up(originals[r])
    x += tile
    for j in range(num_pairs):
      x += GAP
      for v in range(2):
        grid[y:y + tile, x:x + tile] = up(pairs[r, j, v])
        x += tile + (PAD if v == 0 else 0)
  return grid


def write_preview(config, out: str, num_images: int = 8, num_pairs: int = 3,
                  tile: int = 0) -> tuple[int, int]:
  """Writes the PNG grid to `out`; returns its (height, width)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  originals, pairs = make_tiles(config, num_images, num_pairs)
  grid = render(originals, pairs, scale_for(config.data.image_size, tile))
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(out, 'wb') as f:  # Local paths or gs://.
    Image.fromarray(grid).save(f, format='PNG')
  return grid.shape[:2]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  h, w = write_preview(_CONFIG.value, _OUT.value, _NUM_IMAGES.value, _NUM_PAIRS.value, _TILE.value)
  print(f'Wrote {_OUT.value} ({w}x{h} px): {_NUM_IMAGES.value} rows of [eval view | '
        f'{_NUM_PAIRS.value} training pairs].')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
