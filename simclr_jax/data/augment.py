"""The SimCLR augmentations as per-image TensorFlow ops (paper appendix A, official data_util.py).

Every random op is STATELESS and takes an explicit `seed` ([2] int32/int64 tensor), split per op,
so a view is a pure function of (image, seed): identical eagerly and inside `tf.data.map`, and
reproducible on resume. Images are float32 in [0, 1]; no mean/std normalisation (as official).

Train: random crop (area in [area_min, 1], aspect in [3/4, 4/3], 100 attempts, min 10% of the image
covered, fallback to the whole image) + bicubic resize -> flip p=0.5 -> colour distortion (p=0.8:
brightness, contrast, saturation, hue in random order with a clip after each; then grayscale
p=0.2) -> Gaussian blur p=0.5 -> clip to [0, 1].

Encoded training images (TFDS bytes) are decoded by the augmentation: crop windows are drawn from
a JPEG's header shape, and only the window holding both views' crops is decoded, once
(preprocess_views_for_train, decode_random_crops; the same windows as on decoded pixels). With
config.aug.on_device the host stops after crop + flip and simclr_jax/data/device_augment.py applies
the colour distortion and blur in the train step, with the same distributions.

The paper's ablation-only ops (rotation, Sobel, Gaussian noise, cutout; `extra`) and the one-branch
mode (`asymmetric`) are in simclr_jax/data/extra_augment.py, with their order and settings.

Deviation, on purpose: the official code blurs on device with ONE sigma per batch and view; here
each image draws its own sigma (same marginal distribution, independent across images).
"""

import tensorflow as tf

from simclr_jax.data import extra_augment

CROP_PROPORTION = 0.875  # Eval centre crop (official).
IMPLS = ('simclrv1', 'simclrv2')


def _split(seed, n):
  return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), n))


def _uniform(seed, minval=0.0, maxval=1.0):
  return tf.random.stateless_uniform([], seed, minval=minval, maxval=maxval)


def _random_apply(fn, p, image, seed):
  """fn(image) with probability p (one scalar draw), else image."""
  return tf.cond(_uniform(seed) < p, lambda: fn(image), lambda: image)


def to_float(image):
  """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]."""
  return tf.image.convert_image_dtype(image, tf.float32)


def resize(image, height, width):
  """Bicubic (Keys a=-0.5, half-pixel centres, no antialias), as the official TF2 code."""
  return tf.image.resize(image, [height, width], method='bicubic', antialias=False)


def crop_window(image_shape, height, width, seed, area_min=0.08):
  """(begin, size) [3] int32 of the random crop of an image of shape `image_shape` [h, w, c].

  Inception-style (official distorted_bounding_box_crop): area in [area_min, 1], aspect ratio in
  [3/4, 4/3] * width/height, 100 attempts, at least 10% of the image, else the whole image. Needs
  only the shape, so the window of a JPEG is known from its header before decoding.
  """
  aspect = width / height
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
      seed=seed, min_object_covered=0.1, aspect_ratio_range=(3 / 4 * aspect, 4 / 3 * aspect),
      area_range=(area_min, 1.0), max_attempts=100, use_image_if_no_bounding_boxes=True)
  return begin, size


def random_crop_with_resize(image, height, width, seed, area_min=0.08):
  """Inception-style crop (crop_window) of decoded pixels, then bicubic resize."""
  begin, size = crop_window(tf.shape(image), height, width, seed, area_min)
  image = tf.slice(image, begin, size)
  return resize(image, height, width)


def decode_image(contents):
  """Encoded bytes (JPEG, PNG, GIF, BMP) -> uint8 [h, w, 3]."""
  return tf.io.decode_image(contents, channels=3, expand_animations=False)


def _jpeg_shape(contents):
  return tf.concat([tf.io.extract_jpeg_shape(contents)[:2], [3]], 0)  # Decoded as RGB.


def decode_random_crop(contents, height, width, seed, area_min=0.08):
  """The pixels random_crop_with_resize would crop (before resizing), decoding only those.

  `contents`: encoded image bytes (scalar tf.string). A JPEG's window is drawn from its header
  shape (tf.io.extract_jpeg_shape) with the same seed and distribution as crop_window, and only
  that window is decoded (tf.io.decode_and_crop_jpeg). Other formats (PNG, ...) are decoded whole
  and sliced: the same window and pixels as crop_window on the decoded image. Returns uint8
  [h', w', 3]. For 4:2:0 JPEGs the edge pixels of a partial decode may differ from a slice of the
  full decode by a few levels (libjpeg upsamples chroma from the neighbours it decoded).
  """
  return decode_random_crops(contents, height, width, [seed], area_min, union=False)[0]


def decode_random_crops(contents, height, width, seeds, area_min=0.08, union=True):
  """decode_random_crop for each of `seeds` (the same windows), decoding the image once.

  `union`: a JPEG decodes the smallest window holding every crop once (decode_and_crop_jpeg),
  then each crop is sliced from it; otherwise each crop decodes its own window. Other formats are
  decoded whole once and sliced.
  """
  def jpeg():
    shape = _jpeg_shape(contents)
    boxes = [crop_window(shape, height, width, s, area_min) for s in seeds]
    if not union:
      return [tf.io.decode_and_crop_jpeg(
          contents, tf.stack([begin[0], begin[1], size[0], size[1]]), channels=3)
              for begin, size in boxes]
    lo = tf.reduce_min(tf.stack([begin for begin, _ in boxes]), 0)
    hi = tf.reduce_max(tf.stack([begin + size for begin, size in boxes]), 0)
    window = tf.stack([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]])
    image = tf.io.decode_and_crop_jpeg(contents, window, channels=3)
    return [tf.slice(image, begin - lo, size) for begin, size in boxes]

  def other():
    image = decode_image(contents)
    shape = tf.shape(image)
    return [tf.slice(image, *crop_window(shape, height, width, s, area_min)) for s in seeds]

  return tf.cond(tf.io.is_jpeg(contents), jpeg, other)


def random_flip(image, seed):
  return tf.image.stateless_random_flip_left_right(image, seed)


def to_grayscale(image):
  return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def _brightness(image, delta, impl, seed):
  if impl == 'simclrv2':  # Multiplicative.
    return image * _uniform(seed, max(1.0 - delta, 0.0), 1.0 + delta)
  return image + _uniform(seed, -delta, delta)  # simclrv1: additive.


def color_jitter(image, strength, seed, impl='simclrv2'):
  """Brightness/contrast/saturation (0.8 s) and hue (0.2 s) in a random order, clip after each."""
  if impl not in IMPLS:
    raise ValueError(f'config.aug.impl={impl!r}; allowed: {IMPLS}.')
  b = c = s = 0.8 * strength
  h = 0.2 * strength
  order_seed, *op_seeds = _split(seed, 5)
  ops = []
  # An op whose factor is 0 is the identity (official behaviour); keep the 4-way order draw anyway.
  ops.append(lambda x: _brightness(x, b, impl, op_seeds[0]) if b else x)
  # Factors are clamped at 0 (the official code clamps brightness only, so its contrast op raises
  # 'lower must be non-negative' for strength > 1.25; saturation is clamped likewise here).
  ops.append(lambda x: tf.image.stateless_random_contrast(x, max(1 - c, 0.0), 1 + c, op_seeds[1])
             if c else x)
  ops.append(lambda x: tf.image.stateless_random_saturation(x, max(1 - s, 0.0), 1 + s, op_seeds[2])
             if s else x)
  ops.append(lambda x: tf.image.stateless_random_hue(x, min(h, 0.5), op_seeds[3]) if h else x)
  order = tf.argsort(tf.random.stateless_uniform([4], order_seed))
  for i in range(4):
    image = tf.switch_case(order[i], [lambda op=op: op(image) for op in ops])
    image = tf.clip_by_value(image, 0.0, 1.0)
  return image


def color_distortion(image, strength, seed, impl='simclrv2'):
  """Colour jitter with p=0.8, then grayscale with p=0.2 (official random_color_jitter)."""
  s_apply, s_jitter, s_gray = _split(seed, 3)
  image = _random_apply(lambda x: color_jitter(x, strength, s_jitter, impl), 0.8, image, s_apply)
  return _random_apply(to_grayscale, 0.2, image, s_gray)


def blur_kernel_size(image_size: int) -> int:
  """Official: image_size // 10, made odd (2 * (k // 2) + 1): 23 taps at 224, 3 at 32."""
  return 2 * ((image_size // 10) // 2) + 1


def gaussian_blur(image, sigma, kernel_size):
  """Separable Gaussian blur with zero padding ('SAME'), as the official code."""
  radius = kernel_size // 2
  x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
  g = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
  g = g / tf.reduce_sum(g)
  channels = tf.shape(image)[-1]
  kh = tf.tile(tf.reshape(g, [1, kernel_size, 1, 1]), [1, 1, channels, 1])
  kv = tf.tile(tf.reshape(g, [kernel_size, 1, 1, 1]), [1, 1, channels, 1])
  out = tf.nn.depthwise_conv2d(image[None], kh, [1, 1, 1, 1], 'SAME')
  out = tf.nn.depthwise_conv2d(out, kv, [1, 1, 1, 1], 'SAME')
  return out[0]


def random_blur(image, height, seed, p=0.5):
  s_apply, s_sigma = _split(seed, 2)
  sigma = _uniform(s_sigma, 0.1, 2.0)
  return _random_apply(lambda x: gaussian_blur(x, sigma, blur_kernel_size(height)), p, image,
                       s_apply)


def _finish_view(image, height, width, seeds, color_jitter_strength, use_blur, flip, impl,
                 extra=(), seed=None):
  """The ops after crop + resize: flip, [rotate], colour distortion, [Sobel], blur, [noise],
  [cutout], clip (seeds: _split(seed, 4); the bracketed ops if named in `extra`, with seeds from
  extra_augment.op_seeds(seed), the view's seed)."""
  _, s_flip, s_color, s_blur = seeds
  x = extra_augment.op_seeds(extra, height, width, seed)
  if flip:
    image = random_flip(image, s_flip)
  if 'rotate' in extra:
    image = extra_augment.random_rotate(image, x['rotate'])
  if color_jitter_strength > 0:
    image = color_distortion(image, color_jitter_strength, s_color, impl)
  if 'sobel' in extra:
    image = extra_augment.sobel(image)
  if use_blur:
    image = random_blur(image, height, s_blur)
  if 'noise' in extra:
    image = extra_augment.gaussian_noise(image, x['noise'])
  if 'cutout' in extra:
    image = extra_augment.cutout(image, x['cutout'])
  image = tf.reshape(image, [height, width, 3])
  return tf.clip_by_value(image, 0.0, 1.0)


def preprocess_for_train(image, height, width, *, color_jitter_strength=1.0, use_blur=True,
                         crop=True, flip=True, impl='simclrv2', area_min=0.08, seed=None,
                         extra=()):
  """One training view. image: [h, w, 3] uint8 or float, or encoded image bytes (a scalar
  tf.string: with `crop`, only the crop window of a JPEG is decoded, see decode_random_crop);
  returns float32 [height, width, 3] in [0, 1].

  `seed`: [2] integer tensor; the same seed gives the same view. None draws one from TF's global
  generator (convenient interactively, not reproducible; the pipelines always pass seeds).
  `color_jitter_strength=0, use_blur=False` is the crop + flip the host ships when colour and blur
  run on the accelerator (config.aug.on_device; simclr_jax/data/device_augment.py).
  `extra`: names of extra_augment ops to apply too (extra_augment.NAMES; default none).
  """
  if seed is None:
    seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
  seeds = _split(seed, 4)
  image = tf.convert_to_tensor(image)
  if image.dtype == tf.string:
    if crop:
      image = resize(to_float(decode_random_crop(image, height, width, seeds[0], area_min)),
                     height, width)
    else:
      image = resize(to_float(decode_image(image)), height, width)
  elif crop:  # Slice, then convert only the crop (as random_crop_with_resize; same values).
    begin, size = crop_window(tf.shape(image), height, width, seeds[0], area_min)
    image = resize(to_float(tf.slice(image, begin, size)), height, width)
  else:
    image = resize(to_float(image), height, width)
  return _finish_view(image, height, width, seeds, color_jitter_strength, use_blur, flip, impl,
                      extra, seed)


def preprocess_views_for_train(image, height, width, seeds, *, color_jitter_strength=1.0,
                               use_blur=True, crop=True, flip=True, impl='simclrv2',
                               area_min=0.08, jpeg_union=True, extra=(), asymmetric=False):
  """[preprocess_for_train(image, seed=s, ...) for s in seeds], decoding encoded bytes once.

  Pixels give exactly those views (and encoded bytes without `crop`, decoded once). Encoded bytes with `crop`
  are decoded once for all views (decode_random_crops: a JPEG only in the window that holds every
  view's crop if `jpeg_union`, else each view decodes its own window): the same crop windows, and
  the same pixels up to the 4:2:0 chroma edge effect decode_random_crop describes.
  `asymmetric` (paper Figure 5): the first view gets every transform, the others are the identity,
  the whole image resized (encoded bytes are then decoded whole, once).
  """
  kw = dict(color_jitter_strength=color_jitter_strength, use_blur=use_blur, flip=flip, impl=impl,
            extra=extra)
  image = tf.convert_to_tensor(image)
  if image.dtype == tf.string and (asymmetric or not crop):
    image = decode_image(image)
  if asymmetric:
    ident = dict(color_jitter_strength=0.0, use_blur=False, crop=False, flip=False, impl=impl)
    return ([preprocess_for_train(image, height, width, seed=seeds[0], crop=crop,
                                  area_min=area_min, **kw)]
            + [preprocess_for_train(image, height, width, seed=s, **ident) for s in seeds[1:]])
  if image.dtype != tf.string:
    return [preprocess_for_train(image, height, width, seed=s, crop=crop, area_min=area_min, **kw)
            for s in seeds]
  split = [_split(s, 4) for s in seeds]
  crops = decode_random_crops(image, height, width, [x[0] for x in split], area_min,
                              union=jpeg_union)
  return [_finish_view(resize(to_float(c), height, width), height, width, x, seed=s, **kw)
          for c, x, s in zip(crops, split, seeds)]


def center_crop(image, height, width, crop_proportion=CROP_PROPORTION):
  """Aspect-preserving centre crop of `crop_proportion` (official arithmetic), then resize."""
  shape = tf.shape(image)
  h = tf.cast(shape[0], tf.float64)
  w = tf.cast(shape[1], tf.float64)
  ratio = width / height

  def crop_size_wide():  # Target wider than the image: width limits.
    return (tf.math.round(crop_proportion / ratio * w), tf.math.round(crop_proportion * w))

  def crop_size_tall():
    return (tf.math.round(crop_proportion * h), tf.math.round(crop_proportion * ratio * h))

  ch, cw = tf.cond(ratio > w / h, crop_size_wide, crop_size_tall)
  ch, cw = tf.cast(ch, tf.int32), tf.cast(cw, tf.int32)
  oy = (shape[0] - ch + 1) // 2
  ox = (shape[1] - cw + 1) // 2
  image = tf.image.crop_to_bounding_box(image, oy, ox, ch, cw)
  return resize(image, height, width)


def preprocess_for_eval(image, height, width, crop=True):
  """Deterministic eval view: centre crop 0.875 (if `crop`) then bicubic resize; float32 [0, 1]."""
  image = to_float(image)
  image = center_crop(image, height, width) if crop else resize(image, height, width)
  image = tf.reshape(image, [height, width, 3])
  return tf.clip_by_value(image, 0.0, 1.0)
