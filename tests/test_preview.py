"""The augmentation preview tool writes a valid PNG grid of the expected size and content."""

import numpy as np
from PIL import Image

from configs import default
from simclr_jax.data import embedded
from simclr_jax.tools import preview_augmentations as preview


def test_writes_png_grid(tmp_path):
  config = default.get_config()
  config.data.image_size = 28  # Native size: the eval view is then the image itself.
  config.aug.flip = True
  config.aug.color_jitter_strength = 1.0
  out = tmp_path / 'grid.png'
  shape = preview.write_preview(config, str(out), num_images=3, num_pairs=2, tile=56)
  with Image.open(out) as im:
    assert im.format == 'PNG' and im.mode == 'RGB'
    im.verify()
  grid = np.asarray(Image.open(out))
  # 3 rows x (1 eval view + 2 pairs) of 56 px tiles (28 px images shown at 2x):
  # width = 4 + 56 + (12 + 56 + 4 + 56) * 2 + 4 = 320; height = 4 + 3 * 56 + 2 * 4 + 4 = 184.
  assert grid.shape == (184, 320, 3) and shape == (184, 320)
  images, _ = embedded.load('train')
  tile = lambda r, c: grid[4 + 60 * r:4 + 60 * r + 56, c:c + 56]
  view_cols = [72, 132, 200, 260]  # 4 + 56 + 12, + 56 + 4, + 56 + 12, + 56 + 4.
  for r, i in enumerate([0, 1333, 2666]):  # Rows are evenly spaced through the 4,000 images.
    # 28 px: the eval view is the image itself, enlarged by pixel repetition.
    np.testing.assert_array_equal(tile(r, 4), np.kron(images[i], np.ones((2, 2, 1), np.uint8)))
    views = [tile(r, c) for c in view_cols]
    for v in views:
      assert not np.array_equal(v, tile(r, 4))  # Augmented.
      np.testing.assert_array_equal(v[::2, ::2], v[1::2, 1::2])  # Whole tiles, 2x enlarged.
    assert not np.array_equal(views[0], views[1]) and not np.array_equal(views[2], views[3])
  assert np.all(grid[:4] == 255) and np.all(grid[:, 60:72] == 255)  # Background between tiles.


def test_default_scale_and_grid_size():
  assert preview.scale_for(28) == 4 and preview.scale_for(224) == 1 and preview.scale_for(32) == 3
  assert preview.grid_size(8, 3, 112) == (8 + 8 * 112 + 7 * 4, 8 + 7 * 112 + 3 * 16)
