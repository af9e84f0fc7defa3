"""Weighted k-nearest-neighbour monitor of representation quality (Wu et al. 2018, instance
discrimination; the usual kNN monitor of self-supervised training).

Features are L2-normalised, so similarity is cosine. Train-split features are the memory bank,
eval-split features the queries. Each query takes its k most similar bank entries; neighbour i
votes for its label with weight exp(sim_i / T), and the class with the largest summed weight wins.
Queries and the bank both go through in fixed-size chunks (the last ones padded, padding never
chosen): each query chunk keeps a running top-k that every bank chunk is merged into, so device
memory stays bounded (an ImageNet bank of 1.28M x 2048 never has to sit on one device) and one
compiled kernel serves every chunk pair.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """[N, D] -> rows of unit L2 norm (all-zero rows stay zero), float32."""
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=('k',))
def _merge_top_k(top_sim: jax.Array, top_lab: jax.Array, queries: jax.Array, bank: jax.Array,
                 bank_labels: jax.Array, num_valid: jax.Array, *, k: int
                 ) -> tuple[jax.Array, jax.Array]:
  """Running top-k [Q, k] (similarities, labels) merged with one bank chunk [M, D] of which the
  first `num_valid` rows are real (the rest is padding that can never be chosen)."""
  sim = jnp.dot(queries, bank.T, precision=jax.lax.Precision.HIGHEST)  # [Q, M]
  sim = jnp.where(jnp.arange(bank.shape[0]) < num_valid, sim, -jnp.inf)
  cand_sim = jnp.concatenate([top_sim, sim], axis=1)
  cand_lab = jnp.concatenate([top_lab, jnp.broadcast_to(bank_labels, sim.shape)], axis=1)
  top_sim, idx = jax.lax.top_k(cand_sim, k)
  return top_sim, jnp.take_along_axis(cand_lab, idx, axis=1)


@functools.partial(jax.jit, static_argnames=('num_classes',))
def _vote(top_sim: jax.Array, top_lab: jax.Array, *, num_classes: int,
          temperature: float) -> jax.Array:
  """[Q, k] neighbour similarities and labels -> class scores [Q, C]: sum of exp(sim / T)."""
  weights = jnp.exp(top_sim / temperature)  # exp(-inf) = 0: unfilled slots do not vote.
  onehot = jax.nn.one_hot(top_lab, num_classes, dtype=jnp.float32)  # [Q, k, C]
  return jnp.einsum('qk,qkc->qc', weights, onehot)


def _chunks(x: np.ndarray, size: int):
  """Yields (rows padded with zeros to `size`, number of real rows)."""
  for start in range(0, len(x), size):
    part = x[start:start + size]
    n = len(part)
    if n < size:
      part = np.concatenate([part, np.zeros((size - n,) + part.shape[1:], part.dtype)])
    yield part, n


def knn_scores(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, num_classes: int,
               *, k: int = 200, temperature: float = 0.1, chunk_size: int = 1024,
               bank_chunk_size: int = 65536) -> np.ndarray:
  """Temperature-weighted kNN class scores for every query: [Q, num_classes] float32.

  bank: [N, D] features of the memory bank (train split), bank_labels: int [N];
  queries: [Q, D]. Both are L2-normalised here. k is clipped to N. The bank streams through
  the device once, in chunks of `bank_chunk_size` rows, while every query chunk of `chunk_size`
  keeps a running top-k, so device memory is O(Q*k + chunk_size*bank_chunk_size + bank chunk).
  """
  bank = l2_normalize(bank)
  bank_labels = np.asarray(bank_labels, np.int32)
  queries = l2_normalize(queries)
  if not len(queries):
    return np.zeros((0, num_classes), np.float32)
  k = int(min(k, len(bank)))
  q_size = int(max(1, min(chunk_size, len(queries))))
  b_size = int(max(1, min(bank_chunk_size, len(bank))))
  q_chunks = [(jnp.asarray(q), n) for q, n in _chunks(queries, q_size)]
  tops = [(jnp.full((q_size, k), -jnp.inf, jnp.float32), jnp.zeros((q_size, k), jnp.int32))
          for _ in q_chunks]
  for (b, nb), (bl, _) in zip(_chunks(bank, b_size), _chunks(bank_labels, b_size)):
    b, bl, nb = jnp.asarray(b), jnp.asarray(bl), jnp.asarray(nb, jnp.int32)
    tops = [_merge_top_k(ts, tl, q, b, bl, nb, k=k) for (ts, tl), (q, _) in zip(tops, q_chunks)]
  out = [np.asarray(_vote(ts, tl, num_classes=num_classes, temperature=float(temperature)))[:n]
         for (ts, tl), (_, n) in zip(tops, q_chunks)]
  return np.concatenate(out)


def knn_classify(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                 num_classes: int, *, k: int = 200, temperature: float = 0.1,
                 chunk_size: int = 1024, bank_chunk_size: int = 65536) -> dict[str, float]:
  """kNN top-1/top-5 of `test` = (features [Q, D], labels [Q]) against the bank `train`."""
  (xtr, ytr), (xte, yte) = train, test
  scores = knn_scores(xtr, ytr, xte, num_classes, k=k, temperature=temperature,
                      chunk_size=chunk_size, bank_chunk_size=bank_chunk_size)
  yte = np.asarray(yte)
  ranked = np.argsort(-scores, axis=1, kind='stable')
  return {'top1': float(np.mean(ranked[:, 0] == yte)),
          'top5': float(np.mean(np.any(ranked[:, :min(5, num_classes)] == yte[:, None], axis=1))),
          'k': int(min(k, len(ytr))), 'temperature': float(temperature),
          'num_train': int(len(ytr)), 'num_eval': int(len(yte))}
