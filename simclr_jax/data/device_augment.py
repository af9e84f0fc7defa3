"""The SimCLR colour distortion and blur as JAX ops, run inside the jitted train step.

With config.aug.on_device the host ships uint8 views that are only cropped, resized and flipped
(input_pipeline.make_views_fn), and the step applies to every view what data/augment.py would have
applied next on the host, with the same distributions:

- colour jitter with p=0.8: brightness, contrast, saturation (factors 0.8 s) and hue (0.2 s) in a
  random order, clipped to [0, 1] after each; brightness multiplicative ('simclrv2', factor
  U[max(0, 1 - 0.8 s), 1 + 0.8 s]) or additive ('simclrv1', delta U[-0.8 s, 0.8 s]), as in the
  official data_util.py; an op whose factor is 0 is the identity;
- grayscale with p=0.2 (ITU-R 601 weights, as tf.image.rgb_to_grayscale); jitter and grayscale run
  only when the strength s > 0, as on the host;
- Gaussian blur with p=0.5 (if config.aug.use_blur): sigma U[0.1, 2.0] per view, separable,
  blur_kernel_size(image_size) taps, zero padding ('SAME');
- a final clip to [0, 1].
With config.aug.asymmetric (paper Figure 5) view 1 gets these ops and view 2 is returned as
shipped (the host's plain resize). Of extra_augment's ops only rotation (on the host) combines
with on_device; validation rejects Sobel, noise and cutout with it.

The same distributions, not the same draws: TF and JAX random bits differ, so a run with
on_device=True sees other (equally distributed) views than one without. The host rounds the
cropped view to uint8 before the colour ops here (on the host they see the float crop).

Randomness is a pure function of (config.seed, step, global example index, view): the key is
jax.random.key(seed) folded with STREAM, then with the step, then with the example's row in the
GLOBAL batch, then with the view (0 or 1). Every view draws from its own key, so the result does
not depend on how the batch is sharded over devices or processes, and a resumed run replays the
same views bit for bit (as input_pipeline's own streams do). Pure functions, vmapped over images;
no TensorFlow.
"""

from typing import Any

import jax
import jax.numpy as jnp

STREAM = 0x5EED_A06  # Fixed stream id: keeps these keys apart from any other use of config.seed.
IMPLS = ('simclrv1', 'simclrv2')
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale (ITU-R 601).
JITTER_P, GRAY_P, BLUR_P = 0.8, 0.2, 0.5
SIGMA_MIN, SIGMA_MAX = 0.1, 2.0


def blur_kernel_size(image_size: int) -> int:
  """Official: image_size // 10, made odd (2 * (k // 2) + 1): 23 taps at 224, 3 at 32."""
  return 2 * ((image_size // 10) // 2) + 1


# ---- Deterministic ops on one float32 image [H, W, 3] in [0, 1] (tf.image semantics). ----


def adjust_brightness(image: jax.Array, factor, impl: str = 'simclrv2') -> jax.Array:
  """'simclrv2': image * factor; 'simclrv1': image + factor (tf.image.adjust_brightness)."""
  return image * factor if impl == 'simclrv2' else image + factor


def adjust_contrast(image: jax.Array, factor) -> jax.Array:
  """(x - mean) * factor + mean, the mean per channel over the image (tf.image.adjust_contrast)."""
  mean = jnp.mean(image, axis=(-3, -2), keepdims=True)
  return (image - mean) * factor + mean


def _hue_value_range(image: jax.Array):
  """Hue in [0, 6) (0 for grays) and the smallest and largest channel of every pixel."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  hi = jnp.maximum(jnp.maximum(r, g), b)
  lo = jnp.minimum(jnp.minimum(r, g), b)
  chroma = hi - lo
  safe = jnp.where(chroma > 0, chroma, 1.0)
  hue = jnp.where(hi == r, (g - b) / safe,
                  jnp.where(hi == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  hue = jnp.where(chroma > 0, jnp.mod(hue, 6.0), 0.0)
  return hue, lo, hi


def _from_hue_value_range(hue, lo, hi) -> jax.Array:
  """Inverse of _hue_value_range: channel n (R 5, G 3, B 1) = hi - chroma * clip(min(k, 4 - k))
  with k = (n + hue) mod 6."""
  chroma = hi - lo

  def channel(n):
    k = jnp.mod(n + hue, 6.0)
    return hi - chroma * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)

  return jnp.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)


def adjust_saturation(image: jax.Array, factor) -> jax.Array:
  """HSV saturation times `factor`, clipped to [0, 1]; hue and value kept
  (tf.image.adjust_saturation). With hue and value fixed every channel is hi - chroma * w(hue),
  so scaling the chroma by s'/s moves each channel's distance to the largest one by that ratio."""
  hi = jnp.max(image, axis=-1, keepdims=True)
  lo = jnp.min(image, axis=-1, keepdims=True)
  chroma = hi - lo
  # s' / s = min(factor, 1 / s) with s = chroma / hi (saturation clipped at 1); grays unchanged.
  ratio = jnp.minimum(factor, hi / jnp.where(chroma > 0, chroma, 1.0))
  return jnp.where(chroma > 0, hi - (hi - image) * ratio, image)


def adjust_hue(image: jax.Array, delta) -> jax.Array:
  """Hue rotated by `delta` turns (in [-0.5, 0.5]); saturation, value kept (tf.image.adjust_hue)."""
  hue, lo, hi = _hue_value_range(image)
  return _from_hue_value_range(jnp.mod(hue + 6.0 * delta, 6.0), lo, hi)


def to_grayscale(image: jax.Array) -> jax.Array:
  """Luma (tf.image.rgb_to_grayscale weights) in all three channels. An explicit weighted sum,
  not a matmul, so it stays float32 on accelerators whose default matmul precision is lower."""
  w = GRAY_WEIGHTS
  gray = image[..., 0] * w[0] + image[..., 1] * w[1] + image[..., 2] * w[2]
  return jnp.repeat(gray[..., None], 3, axis=-1)


def gaussian_blur(image: jax.Array, sigma, kernel_size: int) -> jax.Array:
  """Separable Gaussian blur, zero padding ('SAME'), horizontal then vertical (augment.py, official
  data_util.gaussian_blur). A sum of shifted copies: `sigma` may be traced (one per image)."""
  radius = kernel_size // 2
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  g = jnp.exp(-jnp.square(x) / (2.0 * jnp.square(jnp.asarray(sigma, jnp.float32))))
  g = g / jnp.sum(g)
  h, w = image.shape[-3], image.shape[-2]
  padded = jnp.pad(image, ((0, 0), (radius, radius), (0, 0)))
  out = sum(g[k] * padded[:, k:k + w] for k in range(kernel_size))
  padded = jnp.pad(out, ((radius, radius), (0, 0), (0, 0)))
  return sum(g[k] * padded[k:k + h] for k in range(kernel_size))


# ---- Random ops on one image (vmap them over a batch of keys). ----
# All random numbers of a view come from ONE draw of uniforms from the view's key, one slot each
# (threefry is inlined at every call site: one call compiles several times faster than a dozen).

_SLOTS = dict(jitter=0, order=slice(1, 5), brightness=5, contrast=6, saturation=7, hue=8, gray=9,
              blur=10, sigma=11)


def view_draws(key: jax.Array, strength: float = 1.0, impl: str = 'simclrv2') -> dict:
  """Every random choice of one view: whether to jitter (p 0.8), the jitter order (a uniform
  permutation of 4) and factors, whether to gray (p 0.2), whether to blur (p 0.5), sigma."""
  b = c = s = 0.8 * strength
  h = min(0.2 * strength, 0.5)
  u = jax.random.uniform(key, (12,), jnp.float32)
  between = lambda name, lo, hi: jnp.maximum(lo, lo + (hi - lo) * u[_SLOTS[name]])
  return {'jitter': u[_SLOTS['jitter']] < JITTER_P,
          'order': jnp.argsort(u[_SLOTS['order']]),
          'brightness': (between('brightness', max(1.0 - b, 0.0), 1.0 + b)
                         if impl == 'simclrv2' else between('brightness', -b, b)),
          'contrast': between('contrast', max(1.0 - c, 0.0), 1.0 + c),
          'saturation': between('saturation', max(1.0 - s, 0.0), 1.0 + s),
          'hue': between('hue', -h, h),
          'gray': u[_SLOTS['gray']] < GRAY_P,
          'blur': u[_SLOTS['blur']] < BLUR_P,
          'sigma': between('sigma', SIGMA_MIN, SIGMA_MAX)}


def jitter_params(key: jax.Array, strength: float, impl: str = 'simclrv2') -> dict:
  """The draws color_jitter uses: the op order and the four factors (f32 scalars)."""
  d = view_draws(key, strength, impl)
  return {k: d[k] for k in ('order', 'brightness', 'contrast', 'saturation', 'hue')}


def _jitter(image: jax.Array, d: dict, strength: float, impl: str) -> jax.Array:
  identity = lambda x: x
  ops = [  # A zero strength makes every op the identity (official behaviour).
      (lambda x: adjust_brightness(x, d['brightness'], impl)) if strength else identity,
      (lambda x: adjust_contrast(x, d['contrast'])) if strength else identity,
      (lambda x: adjust_saturation(x, d['saturation'])) if strength else identity,
      (lambda x: adjust_hue(x, d['hue'])) if strength else identity,
  ]
  # A loop, not 4 unrolled copies: under vmap every switch evaluates all four ops, and one body
  # compiles several times faster.
  body = lambda i, x: jnp.clip(jax.lax.switch(d['order'][i], ops, x), 0.0, 1.0)
  return jax.lax.fori_loop(0, 4, body, image)


def color_jitter(image: jax.Array, key: jax.Array, strength: float,
                 impl: str = 'simclrv2') -> jax.Array:
  """Brightness, contrast, saturation, hue in a random order, clip to [0, 1] after each."""
  if impl not in IMPLS:
    raise ValueError(f'config.aug.impl={impl!r}; allowed: {IMPLS}.')
  return _jitter(image, view_draws(key, strength, impl), strength, impl)


def _color(image: jax.Array, d: dict, strength: float, impl: str) -> jax.Array:
  image = jnp.where(d['jitter'], _jitter(image, d, strength, impl), image)
  return jnp.where(d['gray'], to_grayscale(image), image)


def color_distortion(image: jax.Array, key: jax.Array, strength: float,
                     impl: str = 'simclrv2') -> jax.Array:
  """Colour jitter with p=0.8, then grayscale with p=0.2 (official random_color_jitter)."""
  if impl not in IMPLS:
    raise ValueError(f'config.aug.impl={impl!r}; allowed: {IMPLS}.')
  return _color(image, view_draws(key, strength, impl), strength, impl)


def random_blur(image: jax.Array, key: jax.Array, kernel_size: int) -> jax.Array:
  """Gaussian blur with p=0.5, sigma U[0.1, 2.0]."""
  d = view_draws(key)
  return jnp.where(d['blur'], gaussian_blur(image, d['sigma'], kernel_size), image)


def augment_view(image: jax.Array, key: jax.Array, *, strength: float, impl: str = 'simclrv2',
                 use_blur: bool = True) -> jax.Array:
  """One view: float32 [H, W, 3] in [0, 1] -> colour distortion (if strength > 0) -> blur (if
  use_blur) -> clip to [0, 1]: the rest of augment.preprocess_for_train after crop and flip."""
  if impl not in IMPLS:
    raise ValueError(f'config.aug.impl={impl!r}; allowed: {IMPLS}.')
  d = view_draws(key, strength, impl)
  image = image.astype(jnp.float32)
  if strength > 0:
    image = _color(image, d, strength, impl)
  if use_blur:
    image = jnp.where(d['blur'], gaussian_blur(image, d['sigma'],
                                               blur_kernel_size(image.shape[-3])), image)
  return jnp.clip(image, 0.0, 1.0)


# ---- The batch: keys from (seed, step, global example index, view). ----


def step_key(seed: int, step) -> jax.Array:
  """Key of one training step: key(seed) folded with STREAM, then with the step."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), STREAM), step)


def view_keys(key: jax.Array, num_examples: int, first_index=0) -> jax.Array:
  """[num_examples, 2] keys: `key` folded with the global example index, then with the view."""
  index = first_index + jnp.arange(num_examples)
  per_example = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
  return jax.vmap(lambda k: jax.vmap(lambda v: jax.random.fold_in(k, v))(jnp.arange(2)))(
      per_example)


def augment_views(views: jax.Array, key: jax.Array, *, strength: float, impl: str = 'simclrv2',
                  use_blur: bool = True, first_index=0) -> jax.Array:
  """views [B, 2, H, W, 3] (uint8 [0, 255] or float [0, 1]) of global examples first_index ..
  first_index + B - 1 -> float32 [B, 2, H, W, 3] in [0, 1]."""
  if views.dtype == jnp.uint8:
    views = views.astype(jnp.float32) / 255.0
  keys = view_keys(key, views.shape[0], first_index)
  fn = lambda x, k: augment_view(x, k, strength=strength, impl=impl, use_blur=use_blur)
  return jax.vmap(jax.vmap(fn))(views.astype(jnp.float32), keys)


def augment_batch(views: jax.Array, step, config: Any) -> jax.Array:
  """The train step's hook: `views` is the GLOBAL batch [B, 2, H, W, 3] of `step`, row i being
  global example i of that step. Returns float32 [B, 2, H, W, 3] in [0, 1]."""
  a = config.aug
  out = augment_views(views, step_key(config.seed, step), strength=a.color_jitter_strength,
                      impl=a.impl, use_blur=a.use_blur)
  if a.get('asymmetric', False):  # Paper Figure 5: view 2 stays the host's plain resize.
    ident = views[:, 1].astype(jnp.float32)
    out = out.at[:, 1].set(ident / 255.0 if views.dtype == jnp.uint8 else ident)
  return out
