"""'embedded_shapes': a generated colour data set in which colour is a nuisance and shape the label.

The embedded MNIST set is grey, so the paper's central augmentation finding (Figure 5, Table 1:
random crops alone let the network solve the contrastive task from colour histograms; crop plus
colour distortion is what learns good features) cannot show on it. Here every image is one of
10 shapes (CLASSES) at a random position, size and small tilt (MAX_TILT), drawn in a random foreground colour
over a random two-colour linear gradient, so that two crops of one image share a colour
histogram that says nothing about the label.

32x32 RGB uint8; 'train' 5,000 and 'test' 1,000 images (500 / 100 per class, interleaved so
every class is spread over the split). Generation is numpy only, anti-aliased by 2x2
supersampling, from fixed seeds (the data set, not the run: config.seed never changes it), takes
about a second and is cached per process. Same API as data/embedded.py.
"""

import functools

import numpy as np

from simclr_jax.data import errors

NAME = 'embedded_shapes'
CLASSES = ('circle', 'ring', 'square', 'frame', 'triangle', 'cross', 'star', 'crescent', 'bar',
           'semicircle')
NUM_CLASSES = len(CLASSES)
SIZE = 32
SPLIT_SIZES = {'train': 500 * NUM_CLASSES, 'test': 100 * NUM_CLASSES}
SPLITS = tuple(SPLIT_SIZES)
_SEEDS = {'train': 20200213, 'test': 20200214}  # Fixed: the images are part of the data set.
_SUPER = 2  # Supersampling factor (anti-aliasing).
# Tilt of the shapes, radians: small, so that orientation stays part of the shape (a square is not
# a diamond) and a short CPU run can learn the classes; full rotation made them far harder.
MAX_TILT = np.pi / 12
_MIN_CONTRAST = 90.0  # Minimum RGB distance between the foreground and the background's mean.


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 [n, 32, 32, 3], labels int32 [n]) for 'train' or 'test'."""
  if split not in SPLITS:
    raise errors.DataConfigError(
        f'config.data.train_split/eval_split={split!r} is not a split of {NAME}; '
        f'allowed: {list(SPLITS)}.')
  return _generate(split)


def _polygon(u, v, n: int, inner: float) -> np.ndarray:
  """Regular n-gon with apothem `inner` (a vertex points up)."""
  inside = np.ones(u.shape, bool)
  for k in range(n):
    a = np.pi / 2 + np.pi / n + 2 * np.pi * k / n  # Outward normal of edge k.
    inside &= u * np.cos(a) + v * np.sin(a) <= inner
  return inside


def _mask(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Inside-test of class `label` in shape coordinates (unit = the shape's radius)."""
  rho = np.hypot(u, v)
  box = np.maximum(np.abs(u), np.abs(v))
  name = CLASSES[label]
  if name == 'circle':
    return rho <= 0.9
  if name == 'ring':
    return (rho <= 1.0) & (rho >= 0.6)
  if name == 'square':
    return box <= 0.72
  if name == 'frame':
    return (box <= 0.8) & (box >= 0.5)
  if name == 'triangle':
    return _polygon(u, v + 0.15, 3, 0.5)
  if name == 'cross':
    return ((np.abs(u) <= 0.28) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.28) & (np.abs(u) <= 0.95))
  if name == 'star':
    phi = np.arctan2(v, u)
    return rho <= 0.4 + 0.6 * np.abs(np.cos(2.5 * (phi - np.pi / 2))) ** 2
  if name == 'crescent':
    return (rho <= 1.0) & (np.hypot(u - 0.5, v) >= 0.8)
  if name == 'bar':
    return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.3)
  return (np.hypot(u, v + 0.3) <= 1.0) & (v >= -0.3)  # semicircle, flat side down.


@functools.lru_cache(maxsize=None)
def _generate(split: str) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.RandomState(_SEEDS[split])
  n = SPLIT_SIZES[split]
  labels = np.tile(np.arange(NUM_CLASSES, dtype=np.int32), n // NUM_CLASSES)
  # Per-image nuisances, drawn for all images before any drawing (independent of the label).
  centre = rng.uniform(0.38, 0.62, (n, 2)) * SIZE
  radius = rng.uniform(0.26, 0.38, n) * SIZE
  angle = rng.uniform(-MAX_TILT, MAX_TILT, n)
  bg = rng.uniform(0, 255, (n, 2, 3))  # Gradient end colours.
  direction = rng.uniform(0, 2 * np.pi, n)
  fg = rng.uniform(0, 255, (n, 3))
  for _ in range(50):  # Redraw foregrounds too close to their background (a few % of images).
    close = np.linalg.norm(fg - bg.mean(1), axis=1) < _MIN_CONTRAST
    if not close.any():
      break
    fg[close] = rng.uniform(0, 255, (int(close.sum()), 3))

  side = SIZE * _SUPER
  grid = (np.arange(side, dtype=np.float32) + 0.5) / _SUPER
  y, x = np.meshgrid(grid, grid, indexing='ij')
  alpha = np.empty((n, SIZE, SIZE), np.float32)
  for c in range(NUM_CLASSES):
    idx = np.flatnonzero(labels == c)
    dx = x[None] - centre[idx, 0, None, None]
    dy = y[None] - centre[idx, 1, None, None]
    cos, sin = np.cos(angle[idx])[:, None, None], np.sin(angle[idx])[:, None, None]
    r = radius[idx, None, None]
    u, v = (cos * dx + sin * dy) / r, (-sin * dx + cos * dy) / r
    m = _mask(c, u, v).astype(np.float32)
    alpha[idx] = m.reshape(len(idx), SIZE, _SUPER, SIZE, _SUPER).mean((2, 4))

  pix = (np.arange(SIZE, dtype=np.float32) + 0.5) / SIZE - 0.5
  py, px = np.meshgrid(pix, pix, indexing='ij')
  t = (np.cos(direction)[:, None, None] * px + np.sin(direction)[:, None, None] * py) + 0.5
  t = np.clip(t, 0, 1)[..., None]  # [n, h, w, 1]: 0 -> colour 0, 1 -> colour 1.
  background = bg[:, None, None, 0] * (1 - t) + bg[:, None, None, 1] * t
  a = alpha[..., None]
  images = background * (1 - a) + fg[:, None, None] * a
  images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
  images.flags.writeable = False
  labels.flags.writeable = False
  return images, labels
