"""knn: the weighted kNN monitor against a float64 NumPy reference and hand-made cases; the
class-balanced bank. (The sharded kNN is compared with this one in test_sharded_eval.py.)"""

import numpy as np
import pytest

from configs import default
from simclr_jax.evaluators import knn
from simclr_jax import validation


def _reference_scores(bank, bank_labels, queries, num_classes, k, temperature):
  """Straight from the definition, float64: score_c = sum over the k most cosine-similar bank
  entries with label c of exp(sim / T)."""
  bank = np.asarray(bank, np.float64)
  queries = np.asarray(queries, np.float64)
  bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  scores = np.zeros((len(queries), num_classes))
  for i, q in enumerate(queries):
    sim = bank @ q
    for j in np.argsort(-sim)[:k]:
      scores[i, bank_labels[j]] += np.exp(sim[j] / temperature)
  return scores


# Bank chunks of 37 (< k = 200: the running top-k starts with empty slots) and of 128 (the last
# bank chunk padded: padding must never be chosen), or the whole bank at once.
@pytest.mark.parametrize('k,temperature,chunk,bank_chunk',
                         [(200, 0.1, 64, 37), (5, 0.5, 1000, 65536), (1, 0.1, 7, 128)])
def test_scores_and_accuracy_match_numpy_reference(k, temperature, chunk, bank_chunk):
  rng = np.random.default_rng(0)
  num_classes = 7
  # Features with some class structure, unnormalised (knn must normalise them itself).
  centres = rng.normal(size=(num_classes, 16))
  ytr = rng.integers(0, num_classes, 500)
  yte = rng.integers(0, num_classes, 301)  # Not a multiple of the chunk: last chunk is padded.
  xtr = (centres[ytr] + 1.5 * rng.normal(size=(500, 16))) * rng.uniform(0.5, 3, (500, 1))
  xte = (centres[yte] + 1.5 * rng.normal(size=(301, 16))) * rng.uniform(0.5, 3, (301, 1))
  ref = _reference_scores(xtr, ytr, xte, num_classes, k, temperature)
  got = knn.knn_scores(xtr, ytr, xte, num_classes, k=k, temperature=temperature, chunk_size=chunk,
                       bank_chunk_size=bank_chunk)
  assert got.shape == (301, num_classes)
  np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-30)
  res = knn.knn_classify((xtr, ytr), (xte, yte), num_classes, k=k, temperature=temperature,
                         chunk_size=chunk, bank_chunk_size=bank_chunk)
  ranked = np.argsort(-ref, axis=1, kind='stable')  # Ties (zero votes): lowest class first.
  assert res['top1'] == pytest.approx(np.mean(ranked[:, 0] == yte))
  assert res['top5'] == pytest.approx(np.mean(np.any(ranked[:, :5] == yte[:, None], axis=1)))
  assert res['num_eval'] == 301 and res['k'] == k
  assert 0.3 < res['top1'] <= res['top5']  # Clearly above chance (1/7): the structure is found.


def test_two_clusters_are_separated_perfectly():
  # Two tight clusters around orthogonal directions; queries near each centre.
  rng = np.random.default_rng(1)
  a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
  bank = np.concatenate([a + 0.05 * rng.normal(size=(30, 3)), b + 0.05 * rng.normal(size=(20, 3))])
  labels = np.array([0] * 30 + [1] * 20)
  queries = np.array([[2.0, 0.1, 0.0], [0.1, 3.0, 0.0], [0.9, 0.0, 0.1]])
  res = knn.knn_classify((bank, labels), (queries, np.array([0, 1, 0])), 2, k=200,
                         chunk_size=2, bank_chunk_size=16)
  assert res['top1'] == 1.0 and res['k'] == 50  # k clipped to the bank size.
  assert res['top5'] == 1.0


def test_votes_are_weighted_by_exp_similarity_not_counted():
  # One near neighbour of class 0 (sim 1) against two farther ones of class 1 (sim 0.5 each):
  # a majority vote says 1, exp(sim/T) at T=0.1 says 0 (e^10 > 2 e^5); at T=10 the count wins.
  bank = np.array([[1.0, 0.0], [0.5, np.sqrt(0.75)], [0.5, -np.sqrt(0.75)], [-1.0, 0.0]])
  labels = np.array([0, 1, 1, 0])
  query = np.array([[1.0, 0.0]])
  s = knn.knn_scores(bank, labels, query, 2, k=3, temperature=0.1)
  np.testing.assert_allclose(s[0], [np.exp(10.0), 2 * np.exp(5.0)], rtol=1e-5)
  assert knn.knn_classify((bank, labels), (query, np.array([0])), 2, k=3,
                          temperature=0.1)['top1'] == 1.0
  assert knn.knn_classify((bank, labels), (query, np.array([1])), 2, k=3,
                          temperature=10.0)['top1'] == 1.0


def test_bank_is_the_first_examples_of_every_class_in_stored_order():
  labels = np.array([2, 0, 0, 1, 2, 0, 2, 1, 0, 2, 2, 1, 0])
  idx = knn.bank_indices(labels, 6, 3)  # 2 per class.
  np.testing.assert_array_equal(idx, [0, 1, 2, 3, 4, 7])
  assert knn.bank_indices(labels, 0, 3) is None and knn.bank_indices(labels, 13, 3) is None
  np.testing.assert_array_equal(knn.bank_indices(labels, 9, 3), [0, 1, 2, 3, 4, 5, 6, 7, 11])
  # A class with fewer examples than its quota gives what it has.
  np.testing.assert_array_equal(knn.bank_indices(np.array([0, 0, 0, 0, 1]), 4, 2), [0, 1, 4])
  rng = np.random.default_rng(0)
  big = rng.integers(0, 10, 5000)
  idx = knn.bank_indices(big, 1000, 10)
  assert np.all(np.bincount(big[idx], minlength=10) == 100) and np.all(np.diff(idx) > 0)
  np.testing.assert_array_equal(idx, knn.bank_indices(big, 1000, 10))  # Deterministic.


@pytest.mark.parametrize('group,key,value', [('eval', 'knn_k', 0), ('eval', 'knn_temperature', 0.0),
                                             ('eval', 'knn_chunk_size', 0),
                                             ('eval', 'knn_bank_size', -1),
                                             ('eval', 'probe_batch_size', 0),
                                             ('eval', 'probe_steps', 0),
                                             ('train', 'eval_every_epochs', -1.0)])
def test_bad_monitor_settings_fail_before_training(group, key, value):
  config = default.get_config()
  config[group][key] = value
  with pytest.raises(validation.ConfigError, match=f'config.{group}.{key}='):
    validation.validate(config, num_devices=8)
