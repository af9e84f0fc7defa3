"""Tests of simclr_jax/data/extra_augment.py (rotation, Sobel, noise, cutout), the asymmetric (one-
branch) mode, and that the default pipeline is unchanged by them.

References: np.rot90; an explicit NumPy 3x3 Sobel correlation with reflect padding; the stated
noise and cutout distributions checked directly; a frozen copy of the pre-extra_augment view
composition (crop -> flip -> colour -> blur -> clip, seeds _split(seed, 4)).
"""

import numpy as np
import pytest
import tensorflow as tf

from configs import default
from simclr_jax import validation
from simclr_jax.data import augment
from simclr_jax.data import device_augment
from simclr_jax.data import extra_augment
from simclr_jax.data import input_pipeline

IMG = np.random.RandomState(0).uniform(0.2, 0.8, (20, 17, 3)).astype(np.float32)
IMG_U8 = np.random.RandomState(1).randint(0, 256, (30, 26, 3)).astype(np.uint8)
GRAY_W = np.array([0.2989, 0.5870, 0.1140], np.float32)


def _seed(i, salt=0):
  return tf.constant([i, salt], tf.int64)


def test_rotate_matches_np_rot90_and_draws_90_180_270():
  img = IMG[:16, :16]
  ks = []
  for i in range(24):
    k = int(extra_augment.rotation_k(_seed(i)))
    ks.append(k)
    np.testing.assert_array_equal(extra_augment.random_rotate(img, _seed(i)).numpy(),
                                  np.rot90(img, k))
  assert set(ks) == {1, 2, 3}  # Figure 4 (f): 90, 180, 270 degrees; never the identity.


def _np_sobel(image):
  grey = image @ GRAY_W
  p = np.pad(grey, 1, mode='reflect')  # tf.image.sobel_edges pads with REFLECT.
  ky = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], np.float64)
  kx = ky.T
  h, w = grey.shape
  gy, gx = np.zeros((h, w)), np.zeros((h, w))
  for i in range(h):
    for j in range(w):
      win = p[i:i + 3, j:j + 3]
      gy[i, j], gx[i, j] = (win * ky).sum(), (win * kx).sum()
  mag = np.sqrt(gx ** 2 + gy ** 2)
  return np.repeat((mag / mag.max())[..., None], 3, -1)


def test_sobel_matches_numpy_convolution():
  out = extra_augment.sobel(IMG).numpy()
  np.testing.assert_allclose(out, _np_sobel(IMG), atol=2e-5)
  assert out.min() >= 0 and out.max() == pytest.approx(1.0)
  np.testing.assert_array_equal(extra_augment.sobel(np.full((8, 8, 3), 0.3, np.float32)), 0.0)


def test_noise_is_zero_mean_with_uniform_std_and_deterministic():
  flat = np.full((32, 32, 3), 0.5, np.float32)  # 0.5 +- 5 * 0.1 never clips.
  stds, means = [], []
  for i in range(60):
    out = extra_augment.gaussian_noise(flat, _seed(i)).numpy()
    stds.append((out - 0.5).std())
    means.append((out - 0.5).mean())
  stds = np.array(stds)
  assert stds.max() <= extra_augment.NOISE_STD_MAX * 1.1 and stds.min() < 0.02
  assert abs(stds.mean() - extra_augment.NOISE_STD_MAX / 2) < 0.015  # U[0, 0.1]: mean 0.05.
  assert abs(np.mean(means)) < 2e-3
  a = extra_augment.gaussian_noise(IMG, _seed(5)).numpy()
  np.testing.assert_array_equal(a, extra_augment.gaussian_noise(IMG, _seed(5)).numpy())
  assert not np.array_equal(a, extra_augment.gaussian_noise(IMG, _seed(6)).numpy())
  assert a.min() >= 0 and a.max() <= 1


def test_cutout_zeroes_exactly_one_square_of_the_stated_size():
  h, w, _ = IMG.shape
  sides = set()
  for i in range(30):
    out = extra_augment.cutout(IMG, _seed(i)).numpy()
    changed = np.any(out != IMG, -1)
    ys, xs = np.nonzero(changed)
    side = ys.max() - ys.min() + 1
    assert xs.max() - xs.min() + 1 == side and changed.sum() == side * side  # One full square.
    assert round(0.25 * min(h, w)) <= side <= round(0.5 * min(h, w))
    np.testing.assert_array_equal(out[changed], extra_augment.CUTOUT_FILL)
    np.testing.assert_array_equal(out[~changed], IMG[~changed])
    top, left, s = (int(v) for v in extra_augment.cutout_box(tf.shape(IMG), _seed(i)))
    assert (top, left, s) == (ys.min(), xs.min(), side)
    sides.add(side)
  assert len(sides) >= 3


def _old_views(image, size, seeds, **kw):
  """The view composition before extra_augment (frozen copy): the reference for 'unchanged'."""
  out = []
  for s in seeds:
    sp = augment._split(s, 4)  # pylint: disable=protected-access
    x = augment.random_crop_with_resize(augment.to_float(image), size, size, sp[0], 0.08)
    x = augment.random_flip(x, sp[1])
    x = augment.color_distortion(x, kw.get('strength', 1.0), sp[2])
    x = augment.random_blur(x, size, sp[3])
    out.append(tf.clip_by_value(tf.reshape(x, [size, size, 3]), 0.0, 1.0).numpy())
  return out


def test_default_views_bitwise_unchanged():
  seeds = [_seed(3, 1), _seed(4, 1)]
  new = augment.preprocess_views_for_train(IMG_U8, 16, 16, seeds)
  for a, b in zip(new, _old_views(IMG_U8, 16, seeds)):
    np.testing.assert_array_equal(a.numpy(), b)
  one = augment.preprocess_for_train(IMG_U8, 16, 16, seed=seeds[0])
  np.testing.assert_array_equal(one.numpy(), new[0].numpy())


def test_new_ops_leave_existing_draws_alone():
  """Rotation on: the same crop + flip, rotated by the drawn quarter turns (no seed shift)."""
  kw = dict(color_jitter_strength=0.0, use_blur=False)
  for i in range(4):
    s = _seed(i, 2)
    base = augment.preprocess_for_train(IMG_U8, 16, 16, seed=s, **kw).numpy()
    rot = augment.preprocess_for_train(IMG_U8, 16, 16, seed=s, extra=('rotate',), **kw).numpy()
    k = int(extra_augment.rotation_k(extra_augment.op_seeds(('rotate',), 16, 16, s)['rotate']))
    np.testing.assert_array_equal(rot, np.rot90(base, k))


def test_all_ops_deterministic_eager_and_in_tf_data():
  fn = lambda s: augment.preprocess_for_train(IMG_U8, 16, 16, seed=s, extra=extra_augment.NAMES)
  eager = np.stack([fn(_seed(i)).numpy() for i in range(2)])
  mapped = np.stack(list(tf.data.Dataset.range(2).map(lambda i: fn(tf.stack(
      [i, tf.constant(0, tf.int64)]))).as_numpy_iterator()))
  np.testing.assert_array_equal(eager, mapped)
  assert not np.array_equal(eager[0], eager[1])
  with pytest.raises(ValueError, match='allowed names'):
    augment.preprocess_for_train(IMG_U8, 16, 16, seed=_seed(0), extra=('solarize',))


@pytest.mark.parametrize('encoding', ['pixels', 'jpeg', 'png'])
def test_asymmetric_view2_is_plain_resize(encoding):
  image = {'pixels': lambda: IMG_U8, 'jpeg': lambda: tf.io.encode_jpeg(IMG_U8),
           'png': lambda: tf.io.encode_png(IMG_U8)}[encoding]()
  pixels = IMG_U8 if encoding == 'pixels' else augment.decode_image(image).numpy()
  seeds = [_seed(7), _seed(8)]
  v1, v2 = augment.preprocess_views_for_train(image, 16, 16, seeds, extra=('noise',),
                                              asymmetric=True)
  ident = tf.clip_by_value(augment.resize(augment.to_float(pixels), 16, 16), 0.0, 1.0)
  np.testing.assert_array_equal(v2.numpy(), ident.numpy())
  np.testing.assert_array_equal(v1.numpy(), augment.preprocess_for_train(
      pixels, 16, 16, seed=seeds[0], extra=('noise',)).numpy())


def _config(**aug):
  config = default.get_config()
  config.data.image_size = 16
  for k, v in aug.items():
    config.aug[k] = v
  return config


def test_make_views_fn_asymmetric_and_on_device_rules():
  views = input_pipeline.make_views_fn(_config(asymmetric=True, rotate=True))(0, IMG_U8).numpy()
  ident = augment.resize(augment.to_float(IMG_U8), 16, 16)
  np.testing.assert_array_equal(views[1], np.round(np.clip(ident, 0, 1) * 255).astype(np.uint8))
  input_pipeline.make_views_fn(_config(on_device=True, rotate=True, asymmetric=True))
  with pytest.raises(ValueError, match='on_device=True cannot be combined'):
    input_pipeline.make_views_fn(_config(on_device=True, sobel=True))


def test_device_augment_asymmetric_keeps_view2():
  views = np.stack([IMG_U8[:8, :8]] * 2)[None]  # [1, 2, 8, 8, 3]
  out = np.asarray(device_augment.augment_batch(views, 0, _config(on_device=True,
                                                                  asymmetric=True)))
  np.testing.assert_array_equal(out[0, 1], views[0, 1].astype(np.float32) / 255.0)


@pytest.mark.parametrize('key,value,allowed', [
    ('cutout', 1, 'True or False'), ('sobel', 'yes', 'True or False'),
    ('noise', None, 'True or False'), ('rotate', 0, 'True or False'),
    ('asymmetric', 'on', 'True or False')])
def test_config_rejects_non_bools(key, value, allowed):
  config = default.get_config()
  with config.ignore_type():  # A bad override from a command line or an old config file.
    config.aug[key] = value
  with pytest.raises(validation.ConfigError) as e:
    validation.validate(config, num_devices=1)
  assert str(e.value) == f'config.aug.{key}={value!r} is invalid; allowed: {allowed}.'


@pytest.mark.parametrize('key', ['sobel', 'noise', 'cutout'])
def test_config_rejects_post_colour_ops_on_device(key):
  config = _config(on_device=True, **{key: True})
  with pytest.raises(validation.ConfigError, match=f'^config.aug.{key}=True is invalid; allowed: '
                     'False while aug.on_device=True'):
    validation.validate(config, num_devices=1)
  validation.validate(_config(on_device=True, rotate=True, asymmetric=True), num_devices=1)
