"""The eval view in JAX, for embedding images outside tf.data (simclr_jax.load, notebooks).

What data/input_pipeline.eval_image does with tf.image: centre crop 0.875 (only when the target
is larger than 32 px, as official), bicubic resize, clip to [0, 1], rounding to uint8 levels.
Plain JAX and NumPy: importing it needs no TensorFlow.
"""

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import steps

CROP_PROPORTION = 0.875  # The eval centre crop (official; data/augment.CROP_PROPORTION).


def eval_crop_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
  """(top, left, crop height, crop width) of the eval centre crop for a square `size` target:
  data/augment.center_crop's arithmetic (round half to even, as tf.math.round)."""
  ratio = 1.0  # Square target: width / height.
  if ratio > width / height:  # The target is wider than the image: width limits.
    ch, cw = np.round(CROP_PROPORTION / ratio * width), np.round(CROP_PROPORTION * width)
  else:
    ch, cw = np.round(CROP_PROPORTION * height), np.round(CROP_PROPORTION * ratio * height)
  ch, cw = int(ch), int(cw)
  return (height - ch + 1) // 2, (width - cw + 1) // 2, ch, cw


def preprocess(images: jax.Array, size: int, crop: bool) -> jax.Array:
  """The eval view. images: uint8 [B, H, W, 3] (or float in [0, 1]) -> float32 [B, size, size, 3]
  in [0, 1], on uint8 levels (k / 255) as the eval pipeline ships it. Jittable (static shapes)."""
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  if crop:
    top, left, ch, cw = eval_crop_box(x.shape[1], x.shape[2], size)
    x = x[:, top:top + ch, left:left + cw]
  # Keys bicubic (a = -0.5), half-pixel centres, no antialiasing, taps outside the image dropped
  # and the rest renormalised: what tf.image.resize(method='bicubic') computes, up to its
  # 1/1024-quantised weight table.
  x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), 'bicubic', antialias=False)
  # The pipeline's uint8, then the train/eval steps' own conversion back to floats.
  return steps.to_float_images(jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0).astype(jnp.uint8))
