"""The paper's other augmentations (SimCLR Figure 4 (f)-(h), (j); Figure 5), as stateless TF ops.

Rotation, cutout, Gaussian noise and Sobel filtering are studied in the paper's ablations only
(Figures 4 and 5: "we only test these operators in ablation"; the training recipe is crop, colour
and blur). Each op takes float32 [h, w, 3] in [0, 1] and a [2] integer `seed`, and is applied with
probability 1 when its config switch (config.aug.rotate / sobel / noise / cutout) is on.

Canonical order in one view (augment._finish_view):
  crop -> flip -> rotate -> colour distortion -> Sobel -> blur -> noise -> cutout -> clip.
Geometric ops first (rotation is geometric, like the flip, so with config.aug.on_device it stays
on the host); Sobel after colour, since it turns the (distorted) image into grey edges; noise after
blur, which would otherwise smooth the noise away; cutout last, so the square holds exactly the
fill value (as DeVries & Taylor 2017 apply it, after all other preprocessing).

Settings. The paper names the ops (Figure 4: "Rotate {90°, 180°, 270°}", "Cutout", "Gaussian
noise", "Sobel filtering"; its caption: ops have "internal parameters (e.g. rotation degree, noise
level)") but the text we could search gives no numbers for cutout or noise; the values below are
our choices, stated with their reasons:
- rotate: a uniform quarter-turn count in ROTATIONS = {1, 2, 3} (90, 180, 270 degrees
  counter-clockwise, the set Figure 4 (f) names; the identity is not drawn, so the op always acts);
- cutout: one square of side round(U[CUTOUT_MIN, CUTOUT_MAX] * min(h, w)) = 1/4 .. 1/2 of the
  side, placed uniformly wholly inside the image, filled with CUTOUT_FILL = 0.5 (the grey square of
  Figure 4 (g); in DeVries & Taylor's mean-normalised inputs their 0 fill is the mean, about grey);
- noise: x + N(0, sigma^2) per pixel and channel, sigma ~ U[0, NOISE_STD_MAX = 0.1] per view
  (a visible but not destructive level on [0, 1] pixels), clipped to [0, 1];
- Sobel: the grey image (ITU-R 601, as tf.image.rgb_to_grayscale) filtered by the 3x3 Sobel
  kernels (tf.image.sobel_edges, reflect padding), magnitude sqrt(gx^2 + gy^2), divided by its
  per-image maximum (an all-flat image stays 0), replicated to 3 channels. Deterministic.

Seeds: one view's seeds for these ops are split from its seed folded with SALT (op_seeds), so the
existing ops' seeds are untouched and with every switch off the views are bitwise those without
this module.
"""

import tensorflow as tf

SALT = 0x0E47A  # Folded into a view's seed for this module's ops only.
ROTATIONS = (1, 2, 3)  # Quarter turns (tf.image.rot90 / np.rot90, counter-clockwise).
CUTOUT_MIN, CUTOUT_MAX, CUTOUT_FILL = 0.25, 0.5, 0.5
NOISE_STD_MAX = 0.1
NAMES = ('rotate', 'sobel', 'noise', 'cutout')  # config.aug switches of this module.
ON_DEVICE = ('rotate',)  # Allowed with config.aug.on_device: geometric, done on the host.
ON_DEVICE_ERROR = ('config.aug.on_device=True cannot be combined with config.aug.sobel, noise or '
                   'cutout=True (they run after colour, which is on device); allowed: on_device='
                   'False, or of these only config.aug.rotate=True.')


def op_seeds(extra, height, width, seed):
  """{name: [2] seed} for NAMES, independent of augment's own _split(seed, 4) ({} if `extra`,
  the names of the ops to apply, is empty); checks the names, and that rotation keeps the shape."""
  if set(extra) - set(NAMES):
    raise ValueError(f'extra={tuple(extra)!r}; allowed names: {NAMES}.')
  if 'rotate' in extra and height != width:
    raise ValueError(f'rotate needs a square view; got {height}x{width}.')
  if not extra:
    return {}
  folded = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), SALT)
  return dict(zip(NAMES, tf.unstack(tf.random.experimental.stateless_split(folded, len(NAMES)))))


def rotation_k(seed):
  """The number of counter-clockwise quarter turns, uniform over ROTATIONS."""
  i = tf.random.stateless_uniform([], seed, 0, len(ROTATIONS), dtype=tf.int32)
  return tf.gather(tf.constant(ROTATIONS, tf.int32), i)


def random_rotate(image, seed):
  """Rotation by 90, 180 or 270 degrees (Figure 4 (f)); a square image keeps its shape."""
  return tf.image.rot90(image, rotation_k(seed))


def sobel(image):
  """Edge magnitude of the grey image, in [0, 1], as 3 equal channels (Figure 4 (j)): keeps
  shapes and discards colour and texture level."""
  grey = tf.image.rgb_to_grayscale(image)
  g = tf.image.sobel_edges(grey[None])[0, :, :, 0, :]  # [h, w, (dy, dx)]
  mag = tf.sqrt(tf.reduce_sum(tf.square(g), -1, keepdims=True))
  mag = tf.math.divide_no_nan(mag, tf.reduce_max(mag))
  return tf.tile(mag, [1, 1, 3])


def gaussian_noise(image, seed):
  """x + N(0, sigma^2) per pixel, sigma ~ U[0, NOISE_STD_MAX] per view, clipped (Figure 4 (h))."""
  s_std, s_noise = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  std = tf.random.stateless_uniform([], s_std, 0.0, NOISE_STD_MAX)
  noise = tf.random.stateless_normal(tf.shape(image), s_noise, stddev=std)
  return tf.clip_by_value(image + noise, 0.0, 1.0)


def cutout_box(image_shape, seed):
  """(top, left, side) int32 of the cutout square inside an image of shape [h, w, ...]."""
  s_side, s_y, s_x = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  h, w = image_shape[0], image_shape[1]
  frac = tf.random.stateless_uniform([], s_side, CUTOUT_MIN, CUTOUT_MAX)
  side = tf.cast(tf.round(frac * tf.cast(tf.minimum(h, w), tf.float32)), tf.int32)
  side = tf.clip_by_value(side, 1, tf.minimum(h, w))
  top = tf.random.stateless_uniform([], s_y, 0, h - side + 1, dtype=tf.int32)
  left = tf.random.stateless_uniform([], s_x, 0, w - side + 1, dtype=tf.int32)
  return top, left, side


def cutout(image, seed, fill=CUTOUT_FILL):
  """One random square (cutout_box) set to `fill` (Figure 4 (g); DeVries & Taylor 2017)."""
  top, left, side = cutout_box(tf.shape(image), seed)
  ys = tf.range(tf.shape(image)[0])[:, None]
  xs = tf.range(tf.shape(image)[1])[None, :]
  inside = (ys >= top) & (ys < top + side) & (xs >= left) & (xs < left + side)
  return tf.where(inside[:, :, None], tf.cast(fill, image.dtype), image)


def switches(aug) -> dict:
  """{name: bool} of this module's config.aug switches (absent keys are off)."""
  return {n: bool(aug.get(n, False)) for n in NAMES}
