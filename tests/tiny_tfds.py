"""A tiny TFDS data set in the real on-disk format, built offline for the tests.

`SimclrTinyShapes` (registered with TFDS by being defined): 37 train / 23 test RGB images of
varying sizes, 5 classes. Each image carries its identity: red = 4 * id + 1 and green =
40 * label + 3 everywhere (blue is texture), so any resized view names its source example.
conftest.py's `tfds_dir` fixture prepares it once per test session. `SimclrTinyUnlabelled` adds
an 'unlabelled' split of 41 images with label -1 (as stl10's); test_train.py prepares it.
"""

import numpy as np
import tensorflow_datasets as tfds

NAME = 'simclr_tiny_shapes'
N_TRAIN, N_TEST, N_CLASSES = 37, 23, 5


def _tiny_example(i, salt):
  h, w = 9 + (5 * i) % 13, 10 + (7 * i) % 11
  blue = np.random.RandomState(1000 * salt + i).randint(0, 256, (h, w))
  img = np.stack([np.full((h, w), 4 * i + 1), np.full((h, w), 40 * (i % N_CLASSES) + 3), blue], -1)
  return img.astype(np.uint8), i % N_CLASSES


class SimclrTinyShapes(tfds.core.GeneratorBasedBuilder):
  """37 train / 23 test RGB images of sizes 9..21 x 10..20, 5 classes."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(num_classes=N_CLASSES)}),
        supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {'train': self._generate_examples(N_TRAIN, 0), 'test': self._generate_examples(N_TEST, 1)}

  def _generate_examples(self, n, salt):
    for i in range(n):
      image, label = _tiny_example(i, salt)
      yield i, {'image': image, 'label': label}


UNLABELLED_NAME = 'simclr_tiny_unlabelled'
N_UNLABELLED = 41


class SimclrTinyUnlabelled(SimclrTinyShapes):
  """As SimclrTinyShapes plus an 'unlabelled' split of 41 images with label -1 (TFDS's "no label",
  as stl10's 'unlabelled' split, the one to pretrain on); 'train' and 'test' are labelled."""
  VERSION = tfds.core.Version('1.0.0')

  def _split_generators(self, dl_manager):
    splits = super()._split_generators(dl_manager)
    splits['unlabelled'] = self._generate_unlabelled()
    return splits

  def _generate_unlabelled(self):
    for i in range(N_UNLABELLED):
      yield i, {'image': _tiny_example(i, 2)[0], 'label': -1}


def ids_of(views):
  """Example ids of [..., H, W, 3] uint8 views of SimclrTinyShapes (red = 4 id + 1)."""
  red = views[..., 0].reshape(views.shape[:-3] + (views.shape[-3] * views.shape[-2],))
  assert np.all(red == red[..., :1]), 'red channel is constant in every view'
  assert np.all((red[..., 0] - 1) % 4 == 0)
  return (red[..., 0].astype(int) - 1) // 4


def prepare(data_dir: str, num_shards: int | None = None, name: str = NAME) -> str:
  """download_and_prepare() into data_dir (no network: nothing is downloaded); returns it.

  `num_shards`: files per split (TFDS picks 1 for a set this small), to test file sharding.
  `name`: NAME or UNLABELLED_NAME.
  """
  builder = tfds.builder(name, data_dir=data_dir)
  builder.download_and_prepare(download_dir=f'{data_dir}/downloads',
                               download_config=tfds.download.DownloadConfig(num_shards=num_shards))
  return data_dir
