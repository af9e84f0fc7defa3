"""Evaluation on features left sharded over 8 emulated devices, against the single-device
references on the embedded set's real images (eval-view pixels, 768 dims: raw-pixel kNN and a
linear probe are strong there, so the comparisons are not between near-chance classifiers).

- knn_classify_sharded equals knn.knn_classify (host, one device) exactly: the same top-5
  classes for every one of the 1,000 queries, so the same top-1/top-5; scores agree to 2e-5
  (the dot products' summation order differs with the block shapes).
- linear_probe_sharded (minibatch Adam) is within PROBE_TOLERANCE of linear_probe.linear_probe
  (full batch) in test top-1, and does not depend on how the rows are laid out on the devices.
"""

import jax
import numpy as np
import pytest

from configs import test as test_config
from simclr_jax.evaluators import feature_store
from simclr_jax.evaluators import linear_probe
from simclr_jax.evaluators import knn
from simclr_jax import sharding
from simclr_jax.data import sources

PROBE_TOLERANCE = 0.02  # Test top-1, sharded minibatch probe vs full-batch reference.
CLASSES = 10


@pytest.fixture(scope='module')
def splits():
  config = test_config.get_config()
  config.eval.batch_size = 56  # 7 per device; padded last batches: 4000 -> 4032, 1000 -> 1008 rows.
  mesh = sharding.make_mesh()
  train = feature_store.pixels(config, 'train', 4000, mesh)
  test = feature_store.pixels(config, 'test', 1000, mesh)
  return mesh, train, test, feature_store.to_host(train), feature_store.to_host(test)


@pytest.fixture(scope='module')
def reference(splits):
  """The single-device kNN scores and result (k=200, T=0.1)."""
  _, _, _, (xtr, ytr), (xte, yte) = splits
  return (knn.knn_scores(xtr, ytr, xte, CLASSES, k=200, temperature=0.1),
          knn.knn_classify((xtr, ytr), (xte, yte), CLASSES, k=200, temperature=0.1))


def _replace_rows(split, mesh, perm):
  """The same examples laid out differently on the devices: rows permuted (padding included)."""
  put = lambda x: jax.device_put(np.asarray(jax.device_get(x))[perm],
                                 sharding.batch_sharded(mesh))
  return feature_store.Sharded(put(split.outputs), put(split.label), put(split.mask), put(split.index),
                          split.num_examples, split.split)


def test_features_stay_sharded(splits):
  mesh, train, test, _, _ = splits
  for s, rows in ((train, 4032), (test, 1008)):
    assert s.outputs.shape == (rows, 16 * 16 * 3)
    for x in (s.outputs, s.label, s.mask, s.index):
      assert x.sharding.is_equivalent_to(sharding.batch_sharded(mesh), x.ndim)
      assert {sh.data.shape[0] for sh in x.addressable_shards} == {rows // 8}
  assert feature_store.count(train) == 4000 and feature_store.count(test) == 1000


@pytest.mark.parametrize('chunk,bank_chunk', [(1024, 4096), (200, 100)])
def test_sharded_knn_equals_single_device_knn(splits, reference, chunk, bank_chunk):
  # (200, 100): 25 queries per device per chunk and 100-row bank chunks, neither dividing the
  # 126 query / 504 bank rows per device: the overlapping last chunks must not count twice.
  mesh, train, test, _, (_, yte) = splits
  ref, want = reference
  scores = knn.knn_scores_sharded(train, test, CLASSES, mesh, k=200, temperature=0.1,
                                  chunk_size=chunk, bank_chunk_size=bank_chunk)
  got, labels = feature_store.to_host(feature_store.Sharded(scores, test.label, test.mask, test.index,
                                                  test.num_examples))
  np.testing.assert_array_equal(labels, yte)
  np.testing.assert_allclose(got, ref, rtol=2e-5)
  np.testing.assert_array_equal(np.argsort(-got, axis=1, kind='stable')[:, :5],
                                np.argsort(-ref, axis=1, kind='stable')[:, :5])
  assert want['top1'] > 0.85  # Raw-pixel kNN on MNIST digits.
  assert knn.knn_classify_sharded(train, test, CLASSES, mesh, k=200, temperature=0.1,
                                  chunk_size=chunk, bank_chunk_size=bank_chunk) == want


def test_sharded_knn_on_a_class_balanced_bank_equals_single_device_knn(splits):
  mesh, train, test, (xtr, ytr), (xte, yte) = splits
  idx = knn.bank_indices(ytr, 300, CLASSES)  # 30 per class.
  want = knn.knn_classify((xtr[idx], ytr[idx]), (xte, yte), CLASSES, k=50)
  got = knn.knn_classify_sharded(feature_store.restrict(train, idx), test, CLASSES, mesh, k=50)
  assert got == want and got['num_train'] == 300


def test_sharded_probe_is_close_to_the_full_batch_probe(splits):
  mesh, train, test, host_train, host_test = splits
  want = linear_probe.linear_probe(host_train, host_test, CLASSES, steps=200)
  got = linear_probe.linear_probe_sharded(train, test, CLASSES, mesh, steps=200, batch_size=1024)
  assert want['top1'] > 0.85
  assert abs(got['top1'] - want['top1']) <= PROBE_TOLERANCE, (got, want)
  assert abs(got['top5'] - want['top5']) <= PROBE_TOLERANCE, (got, want)
  assert (got['num_train'], got['num_eval']) == (4000, 1000)
  # The same rows in another device layout (as 2 processes x 4 devices give): each minibatch is
  # drawn by a hash of the example, so only the order of float sums changes.
  perm = np.random.default_rng(0).permutation(train.outputs.shape[0])
  moved = linear_probe.linear_probe_sharded(_replace_rows(train, mesh, perm), test, CLASSES, mesh,
                                        steps=200, batch_size=1024)
  assert abs(moved['top1'] - got['top1']) <= 0.002 and abs(moved['train_top1'] -
                                                           got['train_top1']) <= 0.002


def test_minibatches_partition_every_epoch():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  index = jnp.arange(4000)
  sizes = []
  for epoch in range(3):
    b = np.asarray(linear_probe.minibatch_of(index, jnp.int32(epoch), 0, 8))
    assert b.min() >= 0 and b.max() < 8
    sizes.append(np.bincount(b, minlength=8))
  sizes = np.array(sizes)
  assert np.all(np.abs(sizes - 500) < 6 * np.sqrt(500))  # Binomial(4000, 1/8) counts.
  assert not np.array_equal(sizes[0], sizes[1])  # A fresh partition each epoch.
  assert linear_probe.probe_capacity(504, 4) == int(np.ceil(126 + 6 * np.sqrt(126) + 2))


def test_gather_rows_moves_only_the_rows_asked_for(splits):
  mesh, _, test, _, (xte, yte) = splits
  wanted = np.array([0, 5, 999, 512])
  h, y = feature_store.gather_rows(test, np.sort(wanted), mesh)
  np.testing.assert_array_equal(h, xte[np.sort(wanted)])
  np.testing.assert_array_equal(y, yte[np.sort(wanted)])


def test_negative_labels_never_reach_a_classifier(splits):
  mesh, train, test, (xtr, ytr), (xte, yte) = splits
  bad = ytr.copy()
  bad[17] = -1
  with pytest.raises(sources.UnlabelledError, match='found -1'):
    knn.knn_classify((xtr, bad), (xte, yte), CLASSES)
  with pytest.raises(sources.UnlabelledError, match='found -1'):
    linear_probe.linear_probe((xtr, bad), (xte, yte), CLASSES, steps=1)
  label = np.asarray(jax.device_get(train.label)).copy()
  label[np.asarray(jax.device_get(train.index)) == 17] = -1
  unlabelled = feature_store.Sharded(train.outputs, jax.device_put(label, train.label.sharding),
                                train.mask, train.index, train.num_examples, 'train')
  with pytest.raises(sources.UnlabelledError, match='kNN bank'):
    knn.knn_classify_sharded(unlabelled, test, CLASSES, mesh)
  with pytest.raises(sources.UnlabelledError, match='linear probe'):
    linear_probe.linear_probe_sharded(unlabelled, test, CLASSES, mesh, steps=1)
