"""feature_store.extract / extract_sharded: every example of a split (or of a subset of its positions)
exactly once, in order, for dict outputs too, with batch sizes that leave a padded last batch on
8 emulated devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from simclr_jax.evaluators import feature_store
from simclr_jax import sharding
from simclr_jax.data import embedded
from simclr_jax.data import input_pipeline


@pytest.mark.parametrize('split,batch', [('test', 56), ('test', 1008), ('train', 24)])
def test_extract_covers_every_example_once_in_order(split, batch):
  config = test_config.get_config()
  config.eval.batch_size = batch  # 56 = 7/device: 1000 = 17*56 + 48; 24: 4000 = 166*24 + 16.
  mesh = sharding.make_mesh()
  assert mesh.size == 8
  images, labels = embedded.load(split)
  fn = jax.jit(lambda x: {'sum': jnp.sum(x.astype(jnp.float32), axis=(1, 2, 3)),
                          'corner': x[:, 0, 0, :]},
               out_shardings=sharding.batch_sharded(mesh))
  out, got_labels = feature_store.extract(config, split, len(labels), mesh, fn)
  assert len(got_labels) == len(labels) == len(out['sum']) == len(out['corner'])
  np.testing.assert_array_equal(got_labels, labels)  # Same examples, same order, none twice.
  # Independent of batching: the eval view of each image, one at a time.
  n = 200 if split == 'train' else len(labels)
  want = np.array([np.asarray(input_pipeline.eval_image(config, images[i]), np.float32).sum()
                   for i in range(n)])
  np.testing.assert_allclose(out['sum'][:n], want)
  assert out['corner'].shape == (len(labels), 3)


@pytest.mark.parametrize('dataset', ['embedded', 'tfds'])
def test_extract_sharded_covers_exactly_the_given_positions(dataset, tfds_dir):
  config = test_config.get_config()
  config.eval.batch_size = 16  # 2 per device.
  mesh = sharding.make_mesh()
  if dataset == 'tfds':
    import tiny_tfds  # pylint: disable=g-import-not-at-top
    config.data.dataset, config.data.data_dir = tiny_tfds.NAME, tfds_dir
    split, n = 'train', tiny_tfds.N_TRAIN
    wanted = np.array([0, 3, 4, 9, 20, 21, 22, 36])
    # The image's red channel names its example: 4 * id + 1.
    fn = jax.jit(lambda x: (x[:, 0, 0, 0].astype(jnp.int32) - 1) // 4,
                 out_shardings=sharding.batch_sharded(mesh))
    ids, labels = feature_store.extract(config, split, n, mesh, fn)  # Stored order (TFDS shuffles).
    assert sorted(ids) == list(range(n)) and np.all(labels == ids % tiny_tfds.N_CLASSES)
  else:
    split, n = 'test', 1000
    wanted = np.sort(np.random.default_rng(0).choice(n, 37, replace=False))
    fn = jax.jit(lambda x: jnp.sum(x.astype(jnp.int32), axis=(1, 2, 3)),
                 out_shardings=sharding.batch_sharded(mesh))
    images, labels = embedded.load(split)
  got = feature_store.extract_sharded(config, split, n, mesh, fn, indices=wanted)
  assert got.num_examples == len(wanted) == feature_store.count(got)
  assert got.outputs.shape[0] == -(-len(wanted) // 16) * 16  # Only whole batches of the subset.
  out, y = feature_store.to_host(got)
  np.testing.assert_array_equal(y, labels[wanted])
  if dataset == 'tfds':
    np.testing.assert_array_equal(out, ids[wanted])
  else:
    want = [np.asarray(input_pipeline.eval_image(config, images[i])).astype(int).sum()
            for i in wanted]
    np.testing.assert_array_equal(out, want)
