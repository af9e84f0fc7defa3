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


SHARDS_NAME = 'simclr_tiny_shards'
N_SHARD_TRAIN, N_PROBE, N_SHARD_TEST = 64, 1000, 200
CORRUPT_IDS = (5, 22, 41, 60)  # Train records whose image bytes are not an image.


class SimclrTinyShards(SimclrTinyShapes):
  """Several files per split (prepare it with num_shards=4) of up to a few hundred records:
  'train' 64 images as SimclrTinyShapes' (ids in the red channel), of which CORRUPT_IDS hold
  bytes that no decoder accepts (as a damaged record of a real set); 'probe' 1,000 and 'test'
  200 clean images, labelled. TFDS stores examples in an order of its own (shuffled by key)."""
  VERSION = tfds.core.Version('1.0.0')

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._train(), 'probe': self._generate_examples(N_PROBE, 3),
            'test': self._generate_examples(N_SHARD_TEST, 4)}

  def _train(self):
    for i in range(N_SHARD_TRAIN):
      image, label = _tiny_example(i, 0)
      yield i, {'image': b'\x89PNG\r\n\x1a\n damaged' if i in CORRUPT_IDS else image,
                'label': label}

  def _generate_examples(self, n, salt):
    for i in range(n):  # Small images: the set is about its files, not its pixels.
      image = np.random.RandomState(1000 * salt + i).randint(0, 256, (6, 6, 3)).astype(np.uint8)
      yield i, {'image': image, 'label': (i * 7 + salt) % N_CLASSES}


def stored_labels(data_dir: str, name: str, split: str) -> np.ndarray:
  """Labels of `split` in stored order, read straight from its TFRecord files in the order TFDS
  lists them (file by file): the ground truth, independent of TFDS's reader and ours."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir)
  out = []
  for f in builder.info.splits[split].file_instructions:
    for rec in tf.data.TFRecordDataset(f.filename).skip(f.skip).take(f.take):
      ex = tf.io.parse_single_example(rec, {'label': tf.io.FixedLenFeature([], tf.int64)})
      out.append(int(ex['label']))
  return np.asarray(out, np.int32)


def ids_of(views):
  """Example ids of [..., H, W, 3] uint8 views of SimclrTinyShapes (red = 4 id + 1)."""
  red = views[..., 0].reshape(views.shape[:-3] + (views.shape[-3] * views.shape[-2],))
  assert np.all(red == red[..., :1]), 'red channel is constant in every view'
  assert np.all((red[..., 0] - 1) % 4 == 0)
  return (red[..., 0].astype(int) - 1) // 4


def prepare(data_dir: str, num_shards: int | None = None, name: str = NAME) -> str:
  """download_and_prepare() into data_dir (no network: nothing is downloaded); returns it.

  `num_shards`: files per split (TFDS picks 1 for a set this small), to test file sharding.
  `name`: NAME, UNLABELLED_NAME or SHARDS_NAME.
  """
  builder = tfds.builder(name, data_dir=data_dir)
  builder.download_and_prepare(download_dir=f'{data_dir}/downloads',
                               download_config=tfds.download.DownloadConfig(num_shards=num_shards))
  return data_dir
