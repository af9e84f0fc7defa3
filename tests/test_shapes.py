"""The generated colour set 'embedded_shapes' (data/shapes.py) and its registration (embedded.SETS).

References: fixed checksums of its first images (the set must not change between runs or
machines with the pinned numpy), its own labels (balance), and the embedded-set code paths the
MNIST set already exercises (get_info, validation, the training and eval pipelines).
"""

import hashlib

import numpy as np
import pytest

from configs import default
from simclr_jax import validation
from simclr_jax.data import embedded
from simclr_jax.data import input_pipeline
from simclr_jax.data import shapes
from simclr_jax.data import sources
from simclr_jax.plan import train_plan


def test_shape_dtype_balance():
  for split, per_class in (('train', 500), ('test', 100)):
    x, y = shapes.load(split)
    assert x.shape == (per_class * 10, 32, 32, 3) and x.dtype == np.uint8
    assert y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y), [per_class] * 10)
  train_rows = {x.tobytes() for x in shapes.load('train')[0]}
  assert not any(x.tobytes() in train_rows for x in shapes.load('test')[0])


def test_deterministic_with_fixed_checksum():
  x, y = shapes.load('train')
  again = shapes._generate.__wrapped__('train')  # pylint: disable=protected-access
  np.testing.assert_array_equal(x, again[0])
  np.testing.assert_array_equal(y, again[1])
  assert hashlib.sha256(x[:20].tobytes()).hexdigest()[:16] == '1ba62a018ae84aa5'
  assert hashlib.sha256(shapes.load('test')[0][-5:].tobytes()).hexdigest()[:16] == \
      '92ffef78891b9b5b'
  np.testing.assert_array_equal(y[:12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])


def test_colour_is_a_nuisance_shape_is_the_label():
  x, y = shapes.load('train')
  means = np.stack([x[y == c].reshape(-1, 3).mean(0) for c in range(10)])
  assert np.abs(means - means.mean(0)).max() < 8, means  # Same mean colour in every class.
  spread = np.stack([x[y == c].mean((1, 2)).std(0) for c in range(10)])
  assert spread.min() > 30  # Within a class, image colours vary widely.
  # The shape: the share of foreground pixels differs between classes (bar vs circle).
  fg = x.astype(np.int32)
  corners = fg[:, [0, 0, -1, -1], [0, -1, 0, -1]].mean(1)
  assert (np.abs(fg[:, 16, 16] - corners).sum(-1) > 0).mean() > 0.5


def test_unknown_split():
  with pytest.raises(ValueError, match="'train', 'test'"):
    shapes.load('validation')


def _config(size=24, batch=16):
  c = default.get_config()
  c.data.dataset = shapes.NAME
  c.data.image_size = size
  c.train.batch_size = batch
  return c


def test_registered_info_validation_pipeline():
  assert embedded.is_embedded('embedded_shapes') and embedded.get('embedded_shapes') is shapes
  assert embedded.is_embedded('embedded_mnist') and not embedded.is_embedded('cifar10')
  assert train_plan.KNOWN_DATASETS['embedded_shapes'] == (10, {'train': 5000, 'test': 1000})
  c = _config()
  validation.validate(c, 1)
  info = sources.get_info(c)
  assert (info.num_train, info.num_eval, info.num_classes) == (5000, 1000, 10)
  assert input_pipeline.in_memory(c)
  batch = next(input_pipeline.train_dataset(c, process_index=0, process_count=1)
               .as_numpy_iterator())
  assert batch['views'].shape == (16, 2, 24, 24, 3) and batch['views'].dtype == np.uint8
  assert not np.array_equal(batch['views'][:, 0], batch['views'][:, 1])
  x = next(iter(input_pipeline.eval_batches(c, 'test', global_batch=100, process_index=0,
                                            process_count=1)))
  assert x['image'].shape[1:] == (24, 24, 3)
  np.testing.assert_array_equal(x['label'], shapes.load('test')[1][:100])
