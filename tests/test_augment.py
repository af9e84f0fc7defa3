"""Tests of simclr_jax.data.augment against independent references.

References used (none of them is augment.py itself):
- the official behaviour written out in numpy here (TF's crop-sampling kernel, the grayscale weights,
  the centre-crop arithmetic worked out by hand, the blur kernel formula);
- jax.image.resize (an independent bicubic implementation) for crop+resize;
- np.fliplr for flips;
- the probabilities the paper fixes (flip 0.5, jitter 0.8, grayscale 0.2, blur 0.5), checked over
  thousands of stateless draws with ~4-standard-error tolerances.

Statistical tests use fixed seeds, so they are deterministic; the tolerances say how far off a
correct implementation could plausibly land, and a wrong rate (e.g. 0.5 instead of 0.8) fails.
"""

import math

import jax
import numpy as np
import pytest
import tensorflow as tf

from simclr_jax.data import augment

N_DRAWS = 4000


def _seed(i, salt=0):
  return tf.stack([tf.cast(i, tf.int64), tf.constant(salt, tf.int64)])


def _map_draws(fn, n=N_DRAWS, salt=0, batch=500):
  """fn(seed) for seeds (i, salt), i < n, run inside tf.data.map; stacked numpy results."""
  ds = tf.data.Dataset.range(n).map(lambda i: fn(_seed(i, salt)), num_parallel_calls=2,
                                    deterministic=True).batch(batch)
  return np.concatenate([b.numpy() for b in ds])


def _within(rate, p, n, k=4.0):
  se = math.sqrt(p * (1 - p) / n)
  return abs(rate - p) <= k * se, f'rate {rate:.4f} vs {p} (n={n}, {k} SE = {k * se:.4f})'


def _colourful(h, w, seed=0):
  """Mid-range colours (no channel at 0 or 1), so jitter always changes pixels and no clip hides it."""
  return np.random.RandomState(seed).uniform(0.2, 0.8, (h, w, 3)).astype(np.float32)


IMG = _colourful(20, 17)
GRAY_W = np.array([0.2989, 0.5870, 0.1140], np.float32)  # Official to_grayscale (ITU-R 601).

# ---- 1. Eager == inside tf.data.map for the same seed; different seeds differ. ----

OPS = {
    'crop_resize': (lambda x, s: augment.random_crop_with_resize(x, 12, 12, s), 8),
    'flip': (lambda x, s: augment.random_flip(x, s), 2),
    'color_jitter': (lambda x, s: augment.color_jitter(x, 1.0, s), 8),
    'color_distortion': (lambda x, s: augment.color_distortion(x, 1.0, s), 2),
    'blur': (lambda x, s: augment.random_blur(x, 32, s), 2),
    'preprocess_for_train': (lambda x, s: augment.preprocess_for_train(x, 12, 12, seed=s), 8),
    'preprocess_for_train_v1': (
        lambda x, s: augment.preprocess_for_train(x, 12, 12, seed=s, impl='simclrv1'), 8),
}


@pytest.mark.parametrize('name', sorted(OPS))
def test_eager_equals_dataset_map_and_seeds_matter(name):
  fn, min_distinct = OPS[name]
  seeds = [(i, 11) for i in range(8)]
  eager = np.stack([fn(tf.constant(IMG), _seed(*s)).numpy() for s in seeds])
  mapped = np.stack(list(tf.data.Dataset.from_tensor_slices(np.array(seeds, np.int64)).map(
      lambda s: fn(tf.constant(IMG), s)).as_numpy_iterator()))
  np.testing.assert_allclose(eager, mapped, atol=1e-6)
  again = np.stack([fn(tf.constant(IMG), _seed(*s)).numpy() for s in seeds])
  np.testing.assert_array_equal(eager, again)  # Stateless: the seed alone fixes the view.
  distinct = len({np.round(x, 5).tobytes() for x in eager})
  assert distinct >= min_distinct, f'{name}: only {distinct} distinct views from 8 seeds'


@pytest.mark.parametrize('name', ['grayscale', 'eval'])
def test_deterministic_ops_eager_equals_map(name):
  fn = {'grayscale': augment.to_grayscale,
        'eval': lambda x: augment.preprocess_for_eval(x, 12, 12)}[name]
  eager = fn(tf.constant(IMG)).numpy()
  mapped = next(tf.data.Dataset.from_tensors(IMG).map(fn).as_numpy_iterator())
  np.testing.assert_allclose(eager, mapped, atol=1e-6)


def test_grayscale_matches_official_weights():
  out = augment.to_grayscale(tf.constant(IMG)).numpy()
  ref = IMG @ GRAY_W
  for c in range(3):
    np.testing.assert_allclose(out[..., c], ref, atol=1e-6)


# ---- 2. Random crop: the box, its distribution, and the resize. ----


def _np_sample_box(rng, H, W, area_lo=0.08, area_hi=1.0, ar_lo=3 / 4, ar_hi=4 / 3,
                   min_covered=0.1, attempts=100):
  """TF's SampleDistortedBoundingBox kernel (whole-image box), written out in numpy (spec §3)."""
  area = H * W
  min_area, max_area = area_lo * area, area_hi * area
  for _ in range(attempts):
    ar = rng.uniform(ar_lo, ar_hi)
    h = int(np.rint(math.sqrt(min_area / ar)))
    h_max = int(np.rint(math.sqrt(max_area / ar)))
    if np.rint(h_max * ar) > W:
      h_max = int((W + 0.5 - 1e-7) / ar)
      if np.rint(h_max * ar) > W:
        h_max -= 1
    h_max = min(h_max, H)
    h = min(h, h_max)
    if h < h_max:
      h += rng.randint(0, h_max - h + 1)
    w = int(np.rint(h * ar))
    if w * h < min_area:
      h += 1
      w = int(np.rint(h * ar))
    if w * h > max_area:
      h -= 1
      w = int(np.rint(h * ar))
    if w * h < min_area or w * h > max_area or w > W or h > H or w <= 0 or h <= 0:
      continue
    y = rng.randint(0, H - h) if h < H else 0
    x = rng.randint(0, W - w) if w < W else 0
    if w * h / area >= min_covered:
      return y, x, h, w
  return 0, 0, H, W


def _crop_boxes(monkeypatch, H, W, n, area_min, salt):
  """[n, 4] int (y, x, h, w) of the crops preprocess_for_train takes (clip bypassed)."""
  size = 8

  def probe(image, height, width):
    v = tf.stack([image[0, 0, 0], image[0, 0, 1],
                  tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)])
    # Scale into [0, 1] so the final clip of preprocess_for_train leaves the numbers intact.
    v = v / 1024.0
    return tf.reshape(tf.pad(v, [[0, height * width * 3 - 4]]), [height, width, 3])

  monkeypatch.setattr(augment, 'resize', probe)
  yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing='ij')
  coords = tf.constant(np.stack([yy, xx, 0 * yy], -1).astype(np.float32))
  out = _map_draws(lambda s: augment.preprocess_for_train(
      coords, size, size, seed=s, color_jitter_strength=0.0, use_blur=False, flip=False,
      area_min=area_min)[0, :2], n=n, salt=salt)
  return np.rint(out.reshape(n, 6)[:, :4] * 1024.0).astype(int)


@pytest.mark.parametrize('H,W,area_min', [(64, 64, 0.08), (48, 60, 0.2)])
def test_crop_box_distribution_matches_tf_kernel(monkeypatch, H, W, area_min):
  n = 3000
  boxes = _crop_boxes(monkeypatch, H, W, n, area_min, salt=5)
  y, x, h, w = boxes.T
  frac = h * w / (H * W)
  ar = w / h
  # Hard bounds (official): at least 10% of the image (min_object_covered) and >= area_min.
  assert frac.min() >= max(area_min, 0.1) - 1e-9 and frac.max() <= 1.0
  assert frac.min() < max(area_min, 0.1) + 0.03  # The lower end is actually reached.
  fallback = (h == H) & (w == W)
  # Aspect ratio within [3/4, 4/3] up to the rounding of w = rint(h * ar).
  assert np.all(ar[~fallback] >= 3 / 4 - 0.5 / h[~fallback] - 1e-9)
  assert np.all(ar[~fallback] <= 4 / 3 + 0.5 / h[~fallback] + 1e-9)
  assert ar.min() < 0.8 and ar.max() > 1.25  # Both ends of the range are used.
  # Offsets: TF's Uniform(H - h) never picks the last offset.
  assert np.all(y >= 0) and np.all(x >= 0)
  assert np.all((y + h <= H - 1) | (h == H)) and np.all((x + w <= W - 1) | (w == W))
  # Distribution: the numpy re-implementation of the kernel as the reference.
  rng = np.random.RandomState(123)
  ref = np.array([_np_sample_box(rng, H, W, area_lo=area_min) for _ in range(20000)])
  ref_frac = ref[:, 2] * ref[:, 3] / (H * W)
  ref_ar = ref[:, 3] / ref[:, 2]
  for name, a, b in [('area', frac, ref_frac), ('aspect', ar, ref_ar),
                     ('y offset', y / H, ref[:, 0] / H)]:
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) < 4 * se, f'{name}: {a.mean():.4f} vs ref {b.mean():.4f}'
  assert frac.max() > 0.95  # The upper end (area 1.0) is reached too.
  for q in (0.2, 0.5, 0.8):  # Shape of the area distribution (height uniform, not area uniform).
    pa, pb = (frac < q).mean(), (ref_frac < q).mean()
    assert abs(pa - pb) < 4 * math.sqrt(pb * (1 - pb) / n + pb * (1 - pb) / len(ref_frac)) + 1e-3


def test_crop_resize_matches_box_and_jax_bicubic():
  """The crop is the box TF samples with the official arguments, resized like jax bicubic."""
  rng = np.random.RandomState(1)
  img = rng.rand(41, 37, 3).astype(np.float32)
  for i in range(6):
    seed = _seed(i, 3)
    out = augment.random_crop_with_resize(tf.constant(img), 16, 16, seed).numpy()
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        img.shape, tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed, min_object_covered=0.1,
        aspect_ratio_range=(0.75, 4 / 3), area_range=(0.08, 1.0), max_attempts=100,
        use_image_if_no_bounding_boxes=True)
    (y0, x0, _), (hh, ww, _) = begin.numpy(), size.numpy()
    crop = img[y0:y0 + hh, x0:x0 + ww]
    ref = np.asarray(jax.image.resize(crop, (16, 16, 3), 'bicubic', antialias=False))
    np.testing.assert_allclose(out, ref, atol=2e-3)


def test_resize_is_keys_bicubic_not_bilinear():
  # jax 'bicubic' (Keys a=-0.5, half-pixel centres) as the reference; bilinear must differ.
  img = np.random.RandomState(8).rand(9, 10, 3).astype(np.float32)
  out = augment.resize(tf.constant(img), 6, 4).numpy()
  ref = np.asarray(jax.image.resize(img, (6, 4, 3), 'bicubic', antialias=False))
  lin = np.asarray(jax.image.resize(img, (6, 4, 3), 'bilinear', antialias=False))
  np.testing.assert_allclose(out, ref, atol=1e-5)
  assert np.abs(out - lin).max() > 1e-2


# ---- 3. Flip, colour distortion, grayscale rates. ----


def test_flip_rate_half():
  img = _colourful(6, 7, seed=2)
  out = _map_draws(lambda s: augment.preprocess_for_train(
      img, 6, 7, seed=s, crop=False, color_jitter_strength=0.0, use_blur=False))
  same = np.all(np.abs(out - img) < 1e-6, axis=(1, 2, 3))
  flipped = np.all(np.abs(out - img[:, ::-1]) < 1e-6, axis=(1, 2, 3))
  assert np.all(same ^ flipped), 'every view is either the image or its mirror'
  ok, msg = _within(flipped.mean(), 0.5, len(out))
  assert ok, msg


def test_color_jitter_and_grayscale_rates():
  img = _colourful(6, 6, seed=3)
  gray = np.repeat((img @ GRAY_W)[..., None], 3, -1)
  out = _map_draws(lambda s: augment.preprocess_for_train(
      img, 6, 6, seed=s, crop=False, flip=False, color_jitter_strength=1.0, use_blur=False))
  untouched = np.all(np.abs(out - img) < 1e-5, axis=(1, 2, 3))
  gray_only = np.all(np.abs(out - gray) < 1e-5, axis=(1, 2, 3))
  is_gray = np.all(np.abs(out - out[..., :1]) < 1e-6, axis=(1, 2, 3))
  jittered = ~(untouched | gray_only)
  n = len(out)
  for rate, p in [(jittered.mean(), 0.8), (is_gray.mean(), 0.2),
                  ((jittered & is_gray).mean(), 0.16), (untouched.mean(), 0.16)]:
    ok, msg = _within(rate, p, n)
    assert ok, msg
  assert np.all(out >= 0) and np.all(out <= 1)


def test_strength_zero_changes_no_colour():
  img = _colourful(5, 5, seed=4)
  out = _map_draws(lambda s: augment.preprocess_for_train(
      img, 5, 5, seed=s, crop=False, flip=False, color_jitter_strength=0.0, use_blur=False),
                   n=300)
  np.testing.assert_allclose(out, np.broadcast_to(img, out.shape), atol=1e-6)


def _brightness_only(impl, strength, values, n):
  """color_jitter on constant gray images: contrast, saturation and hue are then identities."""
  imgs = [np.full((4, 4, 3), v, np.float32) for v in values]
  return _map_draws(lambda s: tf.stack([augment.color_jitter(x, strength, s, impl)[0, 0, 0]
                                        for x in imgs]), n=n, salt=9)


def test_brightness_v2_multiplicative_v1_additive():
  n = 400
  v2 = _brightness_only('simclrv2', 0.25, [0.25, 0.5], n)  # factor in [0.8, 1.2]: no clipping.
  np.testing.assert_allclose(v2[:, 1], 2 * v2[:, 0], atol=1e-5)
  f = v2[:, 0] / 0.25
  assert f.min() >= 0.8 - 1e-5 and f.max() <= 1.2 + 1e-5 and f.min() < 0.82 and f.max() > 1.18
  assert np.ptp(v2[:, 1] - v2[:, 0]) > 0.05  # Not additive.
  v1 = _brightness_only('simclrv1', 0.25, [0.25, 0.5], n)  # delta in [-0.2, 0.2].
  np.testing.assert_allclose(v1[:, 1] - v1[:, 0], 0.25, atol=1e-5)
  d = v1[:, 0] - 0.25
  assert d.min() >= -0.2 - 1e-5 and d.max() <= 0.2 + 1e-5 and d.min() < -0.18 and d.max() > 0.18
  # Strength 1 (v2): factor in [max(0, 1 - 0.8), 1.8] = [0.2, 1.8].
  f1 = _brightness_only('simclrv2', 1.0, [0.25], n)[:, 0] / 0.25
  assert f1.min() >= 0.2 - 1e-5 and f1.max() <= 1.8 + 1e-5 and f1.min() < 0.3 and f1.max() > 1.7
  with pytest.raises(ValueError, match='impl'):
    augment.color_jitter(tf.zeros([2, 2, 3]), 1.0, _seed(0), 'simclrv3')


# ---- 4. Blur: rate, sigma range, kernel size, zero padding. ----


def test_blur_kernel_size_official_formula():
  for size in (224, 32, 96, 28, 16, 9):
    k0 = size // 10
    radius = int(k0 / 2)  # Official: radius = int(kernel_size / 2); kernel = 2 * radius + 1.
    assert augment.blur_kernel_size(size) == 2 * radius + 1
  assert augment.blur_kernel_size(224) == 23 and augment.blur_kernel_size(32) == 3


@pytest.mark.parametrize('size,taps', [(224, 23), (32, 3)])
def test_blur_support_in_pipeline(size, taps):
  """A delta blurred by preprocess_for_train spreads over exactly `taps` rows and columns."""
  delta = np.zeros((size, size, 3), np.float32)
  delta[size // 2, size // 2] = 1.0
  spans = set()
  for i in range(12):
    out = augment.preprocess_for_train(delta, size, size, seed=_seed(i, 2), crop=False,
                                       flip=False, color_jitter_strength=0.0).numpy()[..., 0]
    rows, cols = np.nonzero(out > 0)
    spans.add((np.ptp(rows) + 1, np.ptp(cols) + 1))
  assert (1, 1) in spans  # Some draws are not blurred.
  assert max(spans) == (taps, taps)  # Wide sigmas fill the whole kernel, never more.


def test_blur_rate_and_sigma_range():
  """Per image: blurred with p=0.5, sigma ~ U[0.1, 2.0]; sigma read back from a blurred delta.

  With a 3-tap kernel (32 px) the right neighbour / centre ratio of a blurred delta is
  q = exp(-1 / (2 sigma^2)), so sigma = sqrt(-1 / (2 ln q)). Sigmas below ~0.15 leave a delta
  unchanged in float32, so the rate is checked on sigma > 0.3, where P = 0.5 * 1.7 / 1.9.
  """
  size = 32
  delta = np.zeros((size, size, 3), np.float32)
  delta[16, 16] = 1.0
  out = _map_draws(lambda s: augment.preprocess_for_train(
      delta, size, size, seed=s, crop=False, flip=False, color_jitter_strength=0.0)[15:18, 15:18, 0])
  centre, right = out[:, 1, 1], out[:, 1, 2]
  q = right / centre
  with np.errstate(divide='ignore'):
    sigma = np.where(q > 0, np.sqrt(-1.0 / (2 * np.log(np.maximum(q, 1e-30)))), 0.0)
  assert sigma.max() <= 2.0 + 1e-3
  blurred = sigma > 0.3
  ok, msg = _within(blurred.mean(), 0.5 * 1.7 / 1.9, len(out))
  assert ok, msg
  s = sigma[blurred]  # Uniform on [0.3, 2.0]: mean 1.15, sd 1.7 / sqrt(12).
  assert abs(s.mean() - 1.15) < 4 * (1.7 / math.sqrt(12)) / math.sqrt(len(s)), s.mean()
  assert s.max() > 1.95 and s.min() < 0.35
  # Not blurred at all (plus sigma < ~0.15): about half of the draws.
  ok, msg = _within((centre == 1.0).mean(), 0.5 + 0.5 * 0.05 / 1.9, len(out), k=5)
  assert ok, msg


def test_gaussian_blur_zero_padding_and_normalised():
  ones = tf.ones([32, 32, 3])
  out = augment.gaussian_blur(ones, 2.0, 3).numpy()
  np.testing.assert_allclose(out[1:-1, 1:-1], 1.0, atol=1e-6)  # Weights sum to 1.
  g = np.exp(-np.arange(-1, 2) ** 2 / 8.0)
  g /= g.sum()
  np.testing.assert_allclose(out[0, 5, 0], g[1] + g[2], atol=1e-6)  # Zero padding darkens.
  np.testing.assert_allclose(out[0, 0, 0], (g[1] + g[2]) ** 2, atol=1e-6)


# ---- 5. Output range and dtype. ----


@pytest.mark.parametrize('dtype', [np.uint8, np.float32, np.float64])
def test_output_range_and_dtype(dtype):
  # A checkerboard overshoots under bicubic upsampling, so the final clip is needed.
  board = (np.indices((6, 6)).sum(0) % 2).astype(np.float32)
  img = np.repeat(board[..., None], 3, -1)
  raw = tf.image.resize(img, [17, 17], method='bicubic').numpy()
  assert raw.min() < -0.01 and raw.max() > 1.01  # The test can fail: unclipped it leaves [0, 1].
  x = (img * 255).astype(np.uint8) if dtype == np.uint8 else img.astype(dtype)
  for out in [augment.preprocess_for_train(x, 17, 17, seed=_seed(i), crop=c,
                                           color_jitter_strength=s)
              for i, (c, s) in enumerate([(False, 0.0), (True, 0.0), (True, 1.0), (False, 1.0)])
              ] + [augment.preprocess_for_eval(x, 17, 17), augment.preprocess_for_eval(x, 17, 17, False)]:
    assert out.dtype == tf.float32 and out.shape == (17, 17, 3)
    out = out.numpy()
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_uint8_and_float_inputs_agree():
  img8 = (np.random.RandomState(5).rand(19, 23, 3) * 255).astype(np.uint8)
  imgf = img8.astype(np.float32) / 255.0
  for i in range(3):
    a = augment.preprocess_for_train(img8, 12, 12, seed=_seed(i)).numpy()
    b = augment.preprocess_for_train(imgf, 12, 12, seed=_seed(i)).numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)
  np.testing.assert_allclose(augment.preprocess_for_eval(img8, 12, 12).numpy(),
                             augment.preprocess_for_eval(imgf, 12, 12).numpy(), atol=1e-5)


# ---- 6. Eval centre crop, worked out by hand. ----


def _ramp(h, w):
  return (16 * np.arange(h)[:, None] + np.arange(w)[None, :]).astype(np.uint8)[..., None].repeat(3, -1)


def test_eval_center_crop_hand_computed_10x8():
  # H=10, W=8, square target: r = 1 > W/H = 0.8, so the width limits:
  # ch = rint(0.875 / 1 * 8) = 7, cw = rint(0.875 * 8) = 7; oy = (10 - 7 + 1) // 2 = 2,
  # ox = (8 - 7 + 1) // 2 = 1. A 7x7 output needs no resampling: rows 2..8, cols 1..7.
  img = _ramp(10, 8)
  out = augment.preprocess_for_eval(img, 7, 7).numpy()
  np.testing.assert_allclose(out * 255, img[2:9, 1:8], atol=1e-3)
  assert out[0, 0, 0] * 255 == pytest.approx(16 * 2 + 1, abs=1e-3)


def test_eval_center_crop_hand_computed_rounds_half_to_even():
  # H=14, W=12: ch = cw = rint(0.875 * 12) = rint(10.5) = 10 (half to even, not 11);
  # oy = (14 - 10 + 1) // 2 = 2, ox = (12 - 10 + 1) // 2 = 1.
  img = _ramp(14, 12)
  out = augment.preprocess_for_eval(img, 10, 10).numpy()
  np.testing.assert_allclose(out * 255, img[2:12, 1:11], atol=1e-3)


def test_eval_center_crop_hand_computed_non_square_target():
  # H=10, W=8, target 5x7: r = 7/5 = 1.4 > 0.8: ch = rint(0.875 / 1.4 * 8) = rint(5.0) = 5,
  # cw = rint(0.875 * 8) = 7; oy = (10 - 5 + 1) // 2 = 3, ox = 1: rows 3..7, cols 1..7.
  img = _ramp(10, 8)
  out = augment.preprocess_for_eval(img, 5, 7).numpy()
  np.testing.assert_allclose(out * 255, img[3:8, 1:8], atol=1e-3)
  # Tall target 9x5: r = 5/9 < 0.8, so the height limits: ch = rint(0.875 * 10) = rint(8.75) = 9,
  # cw = rint(0.875 * 5/9 * 10) = rint(4.86) = 5; oy = (10 - 9 + 1) // 2 = 1, ox = (8 - 5 + 1) // 2 = 2.
  out = augment.preprocess_for_eval(img, 9, 5).numpy()
  np.testing.assert_allclose(out * 255, img[1:10, 2:7], atol=1e-3)


def test_eval_without_crop_is_a_resize():
  img = _ramp(10, 8)
  out = augment.preprocess_for_eval(img, 10, 8, crop=False).numpy()
  np.testing.assert_allclose(out * 255, img, atol=1e-3)


def test_strong_jitter_does_not_crash():
  """Strength > 1.25 makes 1 - 0.8 s negative: factors are clamped at 0 instead of raising."""
  for s in (1.5, 3.0):
    out = augment.color_jitter(tf.constant(IMG), s, _seed(1)).numpy()
    assert out.min() >= 0 and out.max() <= 1



def test_preprocess_for_train_without_seed_draws_fresh_views():
  """The issue's public signature has no seed: without one, each call is a new random view."""
  image = tf.constant(np.random.RandomState(0).randint(0, 256, (40, 48, 3)), tf.uint8)
  a = augment.preprocess_for_train(image, 24, 24, use_blur=False)
  b = augment.preprocess_for_train(image, 24, 24, use_blur=False)
  assert a.shape == (24, 24, 3) and a.dtype == tf.float32
  assert not np.array_equal(a.numpy(), b.numpy())
