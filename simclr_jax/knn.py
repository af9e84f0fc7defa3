"""Weighted k-nearest-neighbour monitor of representation quality (Wu et al. 2018, instance
discrimination; the usual kNN monitor of self-supervised training).

Features are L2-normalised, so similarity is cosine. Train-split features are the memory bank,
eval-split features the queries. Each query takes its k most similar bank entries; neighbour i
votes for its label with weight exp(sim_i / T), and the class with the largest summed weight wins.
Queries go through in fixed-size chunks (the last one padded), so memory stays at
O(chunk * bank) and one compiled kernel serves every chunk.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """[N, D] -> rows of unit L2 norm (all-zero rows stay zero), float32."""
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=('k', 'num_classes'))
def _chunk_scores(bank: jax.Array, bank_labels: jax.Array, queries: jax.Array, *, k: int,
                  num_classes: int, temperature: float) -> jax.Array:
  """bank [N, D], bank_labels int32 [N], queries [Q, D] (unit rows) -> class scores [Q, C] f32."""
  sim = jnp.dot(queries, bank.T, precision=jax.lax.Precision.HIGHEST)  # [Q, N]
  top_sim, top_idx = jax.lax.top_k(sim, k)  # [Q, k]
  weights = jnp.exp(top_sim / temperature)
  onehot = jax.nn.one_hot(bank_labels[top_idx], num_classes, dtype=jnp.float32)  # [Q, k, C]
  return jnp.einsum('qk,qkc->qc', weights, onehot)


def knn_scores(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, num_classes: int,
               *, k: int = 200, temperature: float = 0.1, chunk_size: int = 1024) -> np.ndarray:
  """Temperature-weighted kNN class scores for every query: [Q, num_classes] float32.

  bank: [N, D] features of the memory bank (train split), bank_labels: int [N];
  queries: [Q, D]. Both are L2-normalised here. k is clipped to N.
  """
  bank = jnp.asarray(l2_normalize(bank))
  bank_labels = jnp.asarray(np.asarray(bank_labels, np.int32))
  queries = l2_normalize(queries)
  k = int(min(k, bank.shape[0]))
  chunk = int(max(1, min(chunk_size, len(queries))))
  out = []
  for start in range(0, len(queries), chunk):
    q = queries[start:start + chunk]
    n = len(q)
    if n < chunk:  # Pad to the compiled shape; padded rows are dropped below.
      q = np.concatenate([q, np.zeros((chunk - n, q.shape[1]), np.float32)])
    s = _chunk_scores(bank, bank_labels, jnp.asarray(q), k=k, num_classes=num_classes,
                      temperature=float(temperature))
    out.append(np.asarray(s)[:n])
  if not out:
    return np.zeros((0, num_classes), np.float32)
  return np.concatenate(out)


def knn_classify(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                 num_classes: int, *, k: int = 200, temperature: float = 0.1,
                 chunk_size: int = 1024) -> dict[str, float]:
  """kNN top-1/top-5 of `test` = (features [Q, D], labels [Q]) against the bank `train`."""
  (xtr, ytr), (xte, yte) = train, test
  scores = knn_scores(xtr, ytr, xte, num_classes, k=k, temperature=temperature,
                      chunk_size=chunk_size)
  yte = np.asarray(yte)
  ranked = np.argsort(-scores, axis=1, kind='stable')
  return {'top1': float(np.mean(ranked[:, 0] == yte)),
          'top5': float(np.mean(np.any(ranked[:, :min(5, num_classes)] == yte[:, None], axis=1))),
          'k': int(min(k, len(ytr))), 'temperature': float(temperature),
          'num_train': int(len(ytr)), 'num_eval': int(len(yte))}
