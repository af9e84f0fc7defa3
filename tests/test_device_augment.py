"""Tests of config.aug.on_device: simclr_jax/device_augment.py (colour, grayscale and blur as JAX
ops in the train step) and the host side that ships crops (decode_and_crop_jpeg, crop + flip).

References (none of them is device_augment.py itself):
- tf.image's own ops (adjust_brightness/contrast/saturation/hue, rgb_to_grayscale) and
  data/augment.py's TF blur, on the same inputs, for the deterministic parts;
- the TF host pipeline (augment.preprocess_for_train without crop/flip), drawn 2,000 times with
  stateless seeds, for the distributions of whole views; the probabilities the paper fixes
  (jitter 0.8, grayscale 0.2, blur 0.5) and the parameter ranges of the official data_util.py;
- the same batch on 1 and on 8 emulated devices, and a run resumed from a checkpoint, for
  determinism;
- tf.io.decode_jpeg / decode_image + a slice of the window tf.image samples, for the host crops.

Statistical tests use fixed keys/seeds, so they are deterministic; tolerances are ~4 standard
errors (two-sample KS at alpha 1e-3), which a wrong rate or range fails.
"""

import functools
import math
import os
import shutil

import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax
import pytest
import tensorflow as tf

from configs import test as test_config
from simclr_jax.data import device_augment as da
from simclr_jax import sharding
from simclr_jax import steps
from simclr_jax.data import augment
from simclr_jax.data import input_pipeline
from simclr_jax.data import sources

N = 2000


def _within(rate, p, n, k=4.0):
  se = math.sqrt(p * (1 - p) / n)
  return abs(rate - p) <= k * se, f'rate {rate:.4f} vs {p} (n={n}, {k} SE = {k * se:.4f})'


def _image(h, w, seed=0, lo=0.0, hi=1.0):
  img = np.random.RandomState(seed).uniform(lo, hi, (h, w, 3)).astype(np.float32)
  return img


def _edge_image():
  """Random colours plus the cases that branch: grays, black, white, ties between channels."""
  img = _image(24, 20)
  img[0, :8] = [[0.5, 0.5, 0.5], [0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.2], [0.5, 0.2, 0.5],
                [0.2, 0.5, 0.5], [1, 0, 0], [0, 0.3, 1]]
  return img


def _keys(n, salt=0):
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(salt), i))(np.arange(n))


# ---- 1. Deterministic ops agree with tf.image on the same inputs. ----


@pytest.mark.parametrize('factor', [0.0, 0.2, 1.0, 1.8])
def test_contrast_and_saturation_match_tf_image(factor):
  img = _edge_image()
  np.testing.assert_allclose(da.adjust_contrast(img, factor),
                             tf.image.adjust_contrast(img, factor).numpy(), atol=1e-5)
  np.testing.assert_allclose(da.adjust_saturation(img, factor),
                             tf.image.adjust_saturation(img, factor).numpy(), atol=1e-5)


@pytest.mark.parametrize('delta', [-0.5, -0.2, 0.0, 0.07, 0.2, 0.5])
def test_hue_matches_tf_image(delta):
  img = _edge_image()
  np.testing.assert_allclose(da.adjust_hue(img, delta), tf.image.adjust_hue(img, delta).numpy(),
                             atol=1e-5)


def test_brightness_grayscale_match_tf():
  img = _edge_image()
  np.testing.assert_allclose(da.adjust_brightness(img, 0.3, 'simclrv1'),
                             tf.image.adjust_brightness(img, 0.3).numpy(), atol=1e-6)
  np.testing.assert_allclose(da.adjust_brightness(img, 1.4, 'simclrv2'), img * 1.4, atol=1e-6)
  np.testing.assert_allclose(da.to_grayscale(img), augment.to_grayscale(img).numpy(), atol=1e-6)


@pytest.mark.parametrize('sigma,size', [(0.1, 32), (0.8, 32), (2.0, 32), (1.3, 224), (2.0, 96)])
def test_blur_matches_tf_blur(sigma, size):
  taps = da.blur_kernel_size(size)
  assert taps == augment.blur_kernel_size(size)
  img = _image(size, size + 3, seed=1)
  np.testing.assert_allclose(da.gaussian_blur(img, sigma, taps),
                             augment.gaussian_blur(img, sigma, taps).numpy(), atol=1e-5)


# ---- 2. Random draws: ranges and order. ----


@pytest.mark.parametrize('impl,strength', [('simclrv2', 1.0), ('simclrv1', 0.5)])
def test_jitter_parameter_ranges(impl, strength):
  p = jax.jit(jax.vmap(lambda k: da.jitter_params(k, strength, impl)))(_keys(N))
  d = 0.8 * strength
  ranges = {'brightness': (max(1 - d, 0), 1 + d) if impl == 'simclrv2' else (-d, d),
            'contrast': (max(1 - d, 0), 1 + d), 'saturation': (max(1 - d, 0), 1 + d),
            'hue': (-0.2 * strength, 0.2 * strength)}
  for name, (lo, hi) in ranges.items():
    x = np.asarray(p[name])
    width = hi - lo
    assert x.min() >= lo - 1e-6 and x.max() <= hi + 1e-6, name
    assert x.min() < lo + 0.01 * width and x.max() > hi - 0.01 * width, name  # Ends reached.
    se = width / math.sqrt(12 * N)  # Uniform: mean (lo + hi) / 2.
    assert abs(x.mean() - (lo + hi) / 2) < 4 * se, (name, x.mean())


def test_jitter_order_uniform_over_permutations():
  order = np.asarray(jax.jit(jax.vmap(lambda k: da.jitter_params(k, 1.0)['order']))(
      _keys(2400, 3)))
  assert all(sorted(o) == [0, 1, 2, 3] for o in order)
  counts = np.unique([o.tobytes() for o in order], return_counts=True)[1]
  assert len(counts) == 24
  chi2 = ((counts - 100.0) ** 2 / 100.0).sum()
  assert chi2 < 52.6, chi2  # chi-square, 23 degrees of freedom, p = 5e-4.


def test_brightness_wiring_v2_multiplicative_v1_additive():
  """color_jitter on two constant gray images: contrast, saturation and hue leave grays alone, so
  only brightness acts: a factor (v2: outputs in a fixed ratio) or a shift (v1: fixed gap)."""
  grays = np.stack([np.full((4, 4, 3), 0.25, np.float32), np.full((4, 4, 3), 0.5, np.float32)])
  for impl in ('simclrv2', 'simclrv1'):
    fn = jax.jit(jax.vmap(lambda k: jax.vmap(lambda x: da.color_jitter(x, k, 0.25, impl))(grays)))
    out = np.asarray(fn(_keys(400, 9)))[:, :, 0, 0, 0]
    if impl == 'simclrv2':
      np.testing.assert_allclose(out[:, 1], 2 * out[:, 0], atol=1e-5)
      assert np.ptp(out[:, 0] / 0.25) > 0.35  # Factors spread over [0.8, 1.2].
    else:
      np.testing.assert_allclose(out[:, 1] - out[:, 0], 0.25, atol=1e-5)
      assert np.ptp(out[:, 0] - 0.25) > 0.35  # Shifts spread over [-0.2, 0.2].


def test_blur_rate_and_sigma_range():
  """As test_augment's: sigma read back from a blurred delta (3 taps at 32 px)."""
  delta = np.zeros((32, 32, 3), np.float32)
  delta[16, 16] = 1.0
  out = np.asarray(jax.jit(jax.vmap(lambda k: da.random_blur(delta, k, 3)))(_keys(N, 2)))
  centre, right = out[:, 16, 16, 0], out[:, 16, 17, 0]
  q = right / centre
  sigma = np.where(q > 0, np.sqrt(-1.0 / (2 * np.log(np.clip(q, 1e-30, 1 - 1e-7)))), 0.0)
  assert sigma.max() <= 2.0 + 1e-3
  blurred = sigma > 0.3
  ok, msg = _within(blurred.mean(), 0.5 * 1.7 / 1.9, N)
  assert ok, msg
  s = sigma[blurred]  # Uniform on [0.3, 2.0].
  assert abs(s.mean() - 1.15) < 4 * (1.7 / math.sqrt(12)) / math.sqrt(len(s)), s.mean()
  assert s.max() > 1.95 and s.min() < 0.35


# ---- 3. Whole views through the batch function the step runs (one compilation). ----

SIZE, ROWS = 20, 16  # 20 px: 3-tap blur. Batches of 16 examples, 32 views.


def _config(**aug):
  c = test_config.get_config()
  c.data.image_size = SIZE
  c.aug.on_device, c.aug.use_blur, c.aug.color_jitter_strength = True, True, 1.0
  for k, v in aug.items():
    c.aug[k] = v
  return c


@functools.lru_cache(maxsize=None)
def _batch_fn():
  """jit(augment_views) with key and first index as arguments: every test below shares it."""
  return jax.jit(lambda views, key, first: da.augment_views(
      views, key, strength=1.0, impl='simclrv2', use_blur=True, first_index=first))


def _draw_views(image, n, salt):
  """n views of one float image from the batch function (n / 32 calls with distinct indices)."""
  views = np.broadcast_to(image, (ROWS, 2) + image.shape)
  key = da.step_key(salt, 0)
  out = [np.asarray(_batch_fn()(views, key, np.int32(i * ROWS))) for i in range(-(-n // 32))]
  return np.concatenate(out).reshape((-1,) + image.shape)[:n]


def test_jitter_and_grayscale_rates():
  """A constant colour: blur keeps the centre pixel (up to rounding), contrast keeps the colour;
  brightness, saturation and hue move it. Jitter 0.8, then grayscale 0.2, independently."""
  colour = np.array([0.3, 0.55, 0.7], np.float32)
  img = np.broadcast_to(colour, (SIZE, SIZE, 3)).astype(np.float32)
  centre = _draw_views(img, N, salt=11)[:, SIZE // 2, SIZE // 2]
  gray = np.full(3, colour @ np.array(da.GRAY_WEIGHTS, np.float32))
  untouched = np.all(np.abs(centre - colour) < 1e-5, axis=-1)
  gray_only = np.all(np.abs(centre - gray) < 1e-5, axis=-1)
  is_gray = np.all(np.abs(centre - centre[:, :1]) < 1e-6, axis=-1)
  jittered = ~(untouched | gray_only)
  for rate, p in [(jittered.mean(), 0.8), (is_gray.mean(), 0.2),
                  ((jittered & is_gray).mean(), 0.16), (untouched.mean(), 0.16)]:
    ok, msg = _within(rate, p, N)
    assert ok, msg


def _ks(a, b):
  """Two-sample Kolmogorov-Smirnov statistic."""
  grid = np.sort(np.concatenate([a, b]))
  cdf = lambda x: np.searchsorted(np.sort(x), grid, side='right') / len(x)
  return np.abs(cdf(a) - cdf(b)).max()


def _stats(views):
  """Per-view statistics: mean, std, chroma (max - min channel) mean, red - blue mean."""
  views = np.asarray(views, np.float64)
  return {'mean': views.mean((1, 2, 3)), 'std': views.std((1, 2, 3)),
          'chroma': (views.max(-1) - views.min(-1)).mean((1, 2)),
          'red-blue': (views[..., 0] - views[..., 2]).mean((1, 2))}


def test_view_statistics_match_tf_pipeline():
  """2,000 views of one textured image: JAX (device) vs TF (host: preprocess_for_train without
  crop and flip), per-view mean, std, chroma and red-blue balance: same distributions."""
  smooth = tf.image.resize(_image(4, 4, seed=5), [SIZE, SIZE], 'bicubic').numpy()
  img = np.clip(0.7 * smooth + 0.3 * _image(SIZE, SIZE, seed=6), 0, 1).astype(np.float32)
  ds = tf.data.Dataset.range(N).map(
      lambda i: augment.preprocess_for_train(
          img, SIZE, SIZE, crop=False, flip=False, color_jitter_strength=1.0, use_blur=True,
          seed=tf.stack([i, tf.constant(77, tf.int64)])),
      num_parallel_calls=2).batch(500)
  ref = _stats(np.concatenate([b.numpy() for b in ds]))
  got = _stats(_draw_views(img, N, salt=4))
  crit = 1.95 * math.sqrt(2 / N)  # KS critical value, alpha = 1e-3.
  for name in ref:
    a, b = got[name], ref[name]
    assert _ks(a, b) < crit, (name, _ks(a, b))
    se = math.sqrt(a.var() / N + b.var() / N)
    assert abs(a.mean() - b.mean()) < 4 * se, (name, a.mean(), b.mean())


# ---- 4. Determinism: (seed, step, global example index), any device count. ----


def _views(b=ROWS, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (b, 2, SIZE, SIZE, 3)).astype(np.uint8)


def test_same_views_on_1_and_8_devices():
  assert jax.device_count() == 8
  views, key = _views(), da.step_key(0, 5)
  batch = NamedSharding(sharding.make_mesh(jax.devices()), P('data'))
  out = [np.asarray(_batch_fn()(views, key, np.int32(0))),  # One device (the default).
         np.asarray(_batch_fn()(jax.device_put(views, batch), key, np.int32(0)))]
  np.testing.assert_array_equal(out[0], out[1])
  assert out[0].dtype == np.float32 and out[0].min() >= 0 and out[0].max() <= 1
  assert not np.allclose(out[0], views / 255.0, atol=1e-3)  # Augmented at all.


def test_views_are_a_function_of_seed_step_and_global_index():
  fn, views = _batch_fn(), _views()
  base = np.asarray(fn(views, da.step_key(0, 5), np.int32(0)))
  np.testing.assert_array_equal(base, np.asarray(fn(views, da.step_key(0, 5), np.int32(0))))
  # Examples 8..15 moved to rows 0..7 of a batch that starts at global index 8 (other images in
  # the other rows): the same views. A row's views depend on its global index, not its neighbours.
  shifted = np.concatenate([views[8:], _views(seed=1)[:8]])
  np.testing.assert_array_equal(np.asarray(fn(shifted, da.step_key(0, 5), np.int32(8)))[:8],
                                base[8:])
  # One image in every row: every row and view differs; another step or seed: other views.
  same = np.asarray(fn(np.repeat(views[:1], ROWS, axis=0), da.step_key(0, 5), np.int32(0)))
  assert len({x.tobytes() for x in same.reshape(2 * ROWS, -1)}) == 2 * ROWS
  for key in (da.step_key(0, 6), da.step_key(1, 5)):
    assert not np.array_equal(np.asarray(fn(views, key, np.int32(0))), base)


class _Toy(nn.Module):
  """A stand-in for the SimCLR model (features, projection, sup_logits, batch_stats): the steps
  that use it compile in about a second."""

  @nn.compact
  def __call__(self, images, train: bool = False):
    h = nn.BatchNorm(use_running_average=not train)(images.reshape((images.shape[0], -1)))
    h = nn.Dense(16)(h)
    sup = nn.Dense(10, name='head_supervised')(jax.lax.stop_gradient(h))
    return {'features': h, 'projection': nn.Dense(8)(h), 'sup_logits': sup}


def test_loss_and_grads_augments_with_state_step():
  """The hook: on_device=True equals on_device=False fed augment_batch(views, state.step)."""
  config, plain = _config(), _config(on_device=False)
  views, labels = _views(), np.arange(ROWS, dtype=np.int32) % 10
  model = _Toy()
  variables = jax.jit(model.init)(jax.random.key(0), np.zeros((2, SIZE, SIZE, 3), np.float32))
  state = steps.TrainState.create(apply_fn=model.apply, params=variables['params'],
                                  batch_stats=variables['batch_stats'],
                                  tx=optax.sgd(0.1)).replace(step=7)
  on = jax.jit(functools.partial(steps.loss_and_grads, config=config))
  off = jax.jit(functools.partial(steps.loss_and_grads, config=plain))
  loss = lambda fn, st, v: float(
      fn(st.params, st, {'views': v, 'label': labels})[1]['contrast_loss'])
  augmented = np.asarray(_batch_fn()(views, da.step_key(config.seed, 7), np.int32(0)))
  np.testing.assert_allclose(loss(on, state, views), loss(off, state, augmented), rtol=1e-6)
  assert abs(loss(on, state, views) - loss(off, state, views)) > 1e-4  # The hook acts.
  assert loss(on, state.replace(step=8), views) != loss(on, state, views)  # Seeded by the step.


# ---- 5. The host side: crops decoded from JPEG windows, crop + flip only. ----


def _jpeg(h, w, chroma=True, seed=0):
  rng = np.random.RandomState(seed)
  smooth = tf.image.resize(rng.uniform(0, 255, (5, 6, 3)).astype(np.float32), [h, w], 'bicubic')
  img = tf.cast(tf.clip_by_value(smooth + rng.normal(0, 10, (h, w, 3)), 0, 255), tf.uint8)
  return tf.io.encode_jpeg(img, quality=90, chroma_downsampling=chroma), img


def _seed(i, salt=0):
  return tf.constant([i, salt], tf.int64)


@pytest.mark.parametrize('fmt', ['jpeg444', 'jpeg420', 'png'])
def test_decoded_crops_are_the_windows_of_the_decoded_image(fmt):
  jpeg, img = _jpeg(70, 90, chroma=fmt == 'jpeg420')
  data = tf.io.encode_png(img) if fmt == 'png' else jpeg
  full = augment.decode_image(data).numpy()
  edge_differs = []
  for i in range(10):
    seeds = [_seed(i, 1), _seed(i, 2)]
    windows = [augment.crop_window(tf.shape(full), 32, 32, s, 0.08) for s in seeds]
    want = [full[b[0]:b[0] + s[0], b[1]:b[1] + s[1]] for b, s in
            [(b.numpy(), s.numpy()) for b, s in windows]]
    for union in (True, False):
      got = [c.numpy() for c in augment.decode_random_crops(data, 32, 32, seeds, 0.08, union)]
      for g, w in zip(got, want):
        assert g.shape == w.shape  # The same window as on the decoded image.
        if fmt == 'jpeg420':  # A partial decode upsamples chroma at its edges from fewer
          # neighbours: only the crop's outermost pixels may differ, by a few levels.
          np.testing.assert_array_equal(g[1:-1, 1:-1], w[1:-1, 1:-1])
          assert np.abs(g.astype(int) - w).mean() < 2
          edge_differs.append(not np.array_equal(g, w))
        else:
          np.testing.assert_array_equal(g, w)
  if fmt == 'jpeg420':  # Some edge differs: the JPEG crops really are partial decodes.
    assert any(edge_differs)


def test_encoded_views_equal_pixel_views_except_420_edges():
  """preprocess_views_for_train on PNG bytes == on decoded pixels, bitwise; 4:2:0 JPEG close."""
  _, img = _jpeg(50, 60)
  png = tf.io.encode_png(img)
  seeds = [_seed(3, 1), _seed(3, 2)]
  kw = dict(color_jitter_strength=1.0, use_blur=True, area_min=0.08)
  a = augment.preprocess_views_for_train(png, 24, 24, seeds, **kw)
  b = augment.preprocess_views_for_train(img, 24, 24, seeds, **kw)
  c = [augment.preprocess_for_train(img, 24, 24, seed=s, **kw) for s in seeds]
  for x, y, z in zip(a, b, c):
    np.testing.assert_array_equal(x.numpy(), y.numpy())
    np.testing.assert_array_equal(y.numpy(), z.numpy())


def test_host_ships_crop_and_flip_only_when_on_device():
  jpeg, img = _jpeg(60, 80, seed=2)
  on = input_pipeline.make_views_fn(_config())
  off = input_pipeline.make_views_fn(_config(on_device=False))
  bare = input_pipeline.make_views_fn(_config(on_device=False, color_jitter_strength=0.0,
                                              use_blur=False))
  for t in range(4):
    v_on = on(tf.constant(t, tf.int64), jpeg).numpy()
    assert v_on.dtype == np.uint8 and v_on.shape == (2, 20, 20, 3)
    np.testing.assert_array_equal(v_on, bare(tf.constant(t, tf.int64), jpeg).numpy())
    assert not np.array_equal(v_on, off(tf.constant(t, tf.int64), jpeg).numpy())


# ---- 6. A short training run with on_device=True, resumed bit for bit. ----


def _pretrain(config, workdir, mesh, monkeypatch):
  """train.pretrain (the real loop, stream, step and checkpoints) with _Toy as the model."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from simclr_jax import models, optim, train  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(models, 'build_model', lambda config, num_classes: _Toy())
  info = sources.get_info(config)
  model = models.build_model(config, info.num_classes)
  init_fn = train.make_init_fn(config, model, optim.create_optimizer(config, info.num_train), mesh)
  writer = metric_writers.create_default_writer(workdir, just_logging=True)
  return train.pretrain(config, workdir, info, mesh, init_fn, writer)


def test_training_runs_and_resumes_bitwise(tmp_path, monkeypatch):
  """4 steps on the embedded set over 2 devices, then steps 3-4 again from the step-2 checkpoint:
  the same parameters, bit for bit (the device augmentation is seeded by the restored step)."""
  config = _config()
  config.train.steps, config.train.checkpoint_every_steps = 4, 2
  mesh = sharding.make_mesh(jax.devices()[:2])
  full = _pretrain(config, str(tmp_path / 'full'), mesh, monkeypatch)
  assert int(full.state.step) == 4
  assert np.isfinite(full.last_metrics['contrast_loss'])
  os.makedirs(tmp_path / 'resumed' / 'checkpoints')
  shutil.copytree(tmp_path / 'full' / 'checkpoints' / '2',
                  tmp_path / 'resumed' / 'checkpoints' / '2')
  resumed = _pretrain(config, str(tmp_path / 'resumed'), mesh, monkeypatch)
  assert resumed.start_step == 2 and int(resumed.state.step) == 4
  for a, b in zip(jax.tree.leaves(full.state.params), jax.tree.leaves(resumed.state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
