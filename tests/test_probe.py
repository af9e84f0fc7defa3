"""The final linear probe: exact on separable data, chance-level on label noise, correct top-k."""

import numpy as np

from simclr_jax.evaluators import feature_store

from simclr_jax.evaluators import linear_probe


def test_probe_separates_linearly_separable_classes():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 8)) * 5
  ytr = rng.integers(0, 4, 400)
  yte = rng.integers(0, 4, 200)
  xtr = centres[ytr] + rng.normal(size=(400, 8))
  xte = centres[yte] + rng.normal(size=(200, 8))
  r = linear_probe.linear_probe((xtr, ytr), (xte, yte), num_classes=4, steps=300)
  assert r['top1'] > 0.97 and r['num_eval'] == 200 and r['num_train'] == 400


def test_probe_is_near_chance_on_random_labels():
  rng = np.random.default_rng(1)
  xtr, xte = rng.normal(size=(500, 16)), rng.normal(size=(2000, 16))
  ytr, yte = rng.integers(0, 10, 500), rng.integers(0, 10, 2000)
  r = linear_probe.linear_probe((xtr, ytr), (xte, yte), num_classes=10, steps=200)
  assert abs(r['top1'] - 0.1) < 0.04  # 4 standard errors of a 2000-sample rate at 0.1.


def test_topk_accuracy_hand_case():
  logits = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
  labels = np.array([2, 0, 0])
  assert feature_store.topk_accuracy(logits, labels, 1) == 1 / 3  # Only row 1 is right.
  assert feature_store.topk_accuracy(logits, labels, 2) == 2 / 3  # Row 0: top-2 {1, 2} has 2.
  assert feature_store.topk_accuracy(logits, labels, 5) == 1.0  # k is capped at the class count.
