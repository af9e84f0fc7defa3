"""The embedded data set: real MNIST digits, a fixed stratified split, RGB uint8."""

import numpy as np
import pytest

from simclr_jax.data import embedded


def test_split_sizes_stratified_and_disjoint():
  xtr, ytr = embedded.load('train')
  xte, yte = embedded.load('test')
  assert xtr.shape == (4000, 28, 28, 3) and xte.shape == (1000, 28, 28, 3)
  assert xtr.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(ytr), [400] * 10)
  np.testing.assert_array_equal(np.bincount(yte), [100] * 10)
  train_rows = {x.tobytes() for x in xtr}
  assert not any(x.tobytes() in train_rows for x in xte[:200])  # No test image in train.


def test_images_are_gray_digits_as_rgb():
  x, _ = embedded.load('test')
  np.testing.assert_array_equal(x[..., 0], x[..., 1])
  np.testing.assert_array_equal(x[..., 0], x[..., 2])
  assert x.max() == 255 and x.min() == 0
  assert 0.05 < (x[..., 0] > 127).mean() < 0.3  # Ink covers a minority of pixels, as in MNIST.


def test_split_is_deterministic():
  a, la = embedded.load('train')
  b, lb = embedded.load('train')
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(la, lb)


def test_unknown_split_names_the_allowed_ones():
  with pytest.raises(ValueError, match="'train', 'test'"):
    embedded.load('validation')
