"""evaluate.extract: every example of a split exactly once, in order, for dict outputs too, with
batch sizes that leave a padded last batch on 8 emulated devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from simclr_jax import evaluate
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
  out, got_labels = evaluate.extract(config, split, len(labels), mesh, fn)
  assert len(got_labels) == len(labels) == len(out['sum']) == len(out['corner'])
  np.testing.assert_array_equal(got_labels, labels)  # Same examples, same order, none twice.
  # Independent of batching: the eval view of each image, one at a time.
  n = 200 if split == 'train' else len(labels)
  want = np.array([np.asarray(input_pipeline.eval_image(config, images[i]), np.float32).sum()
                   for i in range(n)])
  np.testing.assert_allclose(out['sum'][:n], want)
  assert out['corner'].shape == (len(labels), 3)
