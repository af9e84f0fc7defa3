"""Weighted k-nearest-neighbour monitor of representation quality (Wu et al. 2018, instance
discrimination; the usual kNN monitor of self-supervised training).

Features are L2-normalised, so similarity is cosine. The memory bank is a labelled split's
features (config.data.probe_train_split, possibly a class-balanced subset), the queries are the
eval split's. Each query takes its k most similar bank entries; neighbour i votes for its label
with weight exp(sim_i / T), and the class with the largest summed weight wins.

`knn_scores_sharded` (what training uses) leaves the bank where feature_store.extract_sharded put
it, sharded over the devices. Queries go through in chunks of `chunk_size`: a chunk is all-gathered,
every device scores it against its bank shard (in bank chunks, keeping a running top-k), and an
all-to-all hands each device the devices' partial top-k lists of its own queries, which it merges
and votes on. Per device: the bank and query shards, plus O(chunk x (k + bank chunk)) working
memory, whatever the split sizes. `knn_scores` is the single-device reference on host arrays.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np

from simclr_jax.evaluators import feature_store
from simclr_jax import sharding
from simclr_jax.data import sources

AXIS = sharding.DATA_AXIS
ROWS = P(AXIS)
BANK_CHUNK = 4096  # Bank rows per device scored at once: a [chunk, BANK_CHUNK] block.


def bank_indices(labels: np.ndarray, bank_size: int, num_classes: int) -> Optional[np.ndarray]:
  """Sorted stored positions of a class-balanced kNN bank: the first bank_size // num_classes
  examples of every class in stored order (all of a smaller class). None (the whole split) if
  bank_size is 0 or not below the split's size. Deterministic, and a prefix of a shuffled split
  (as TFDS stores ImageNet), so reading it touches little more than the bank."""
  labels = np.asarray(labels)
  if bank_size <= 0 or bank_size >= len(labels):
    return None
  per_class = max(1, bank_size // num_classes)
  order = np.argsort(labels, kind='stable')  # Stored order within each class.
  first = np.searchsorted(labels[order], labels[order], side='left')
  rank = np.empty(len(labels), np.int64)
  rank[order] = np.arange(len(labels)) - first
  return np.flatnonzero(rank < per_class)


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
  sources.check_labels(ytr, num_classes, 'kNN bank labels')
  sources.check_labels(yte, num_classes, 'kNN query labels')
  scores = knn_scores(xtr, ytr, xte, num_classes, k=k, temperature=temperature,
                      chunk_size=chunk_size, bank_chunk_size=bank_chunk_size)
  yte = np.asarray(yte)
  ranked = np.argsort(-scores, axis=1, kind='stable')
  return {'top1': float(np.mean(ranked[:, 0] == yte)),
          'top5': float(np.mean(np.any(ranked[:, :min(5, num_classes)] == yte[:, None], axis=1))),
          'k': int(min(k, len(ytr))), 'temperature': float(temperature),
          'num_train': int(len(ytr)), 'num_eval': int(len(yte))}


# ---- the sharded kNN: bank and queries stay on the devices ----


def _normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows to unit L2 norm in float32, as l2_normalize."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True)), eps)


def _local_top_k(queries, bank, bank_labels, bank_ok, *, k, bank_chunk):
  """Top-k (similarities, labels) [Q, k] of normalised `queries` [Q, D] among this device's bank
  rows [L, D] with bank_ok, scanning the bank `bank_chunk` rows at a time."""
  rows = bank.shape[0]
  m = min(bank_chunk, rows)

  def body(j, top):
    start = jnp.minimum(j * m, rows - m)  # The last chunk overlaps the one before; its ...
    fresh = (start + jnp.arange(m)) >= j * m  # ... repeated rows are not candidates twice.
    b = _normalize(jax.lax.dynamic_slice_in_dim(bank, start, m))
    ok = jax.lax.dynamic_slice_in_dim(bank_ok, start, m) & fresh
    sim = jnp.dot(queries, b.T, precision=jax.lax.Precision.HIGHEST)  # [Q, m]
    sim = jnp.where(ok, sim, -jnp.inf)
    s, i = jax.lax.top_k(sim, min(k, m))
    lab = jax.lax.dynamic_slice_in_dim(bank_labels, start, m)[i]
    cand_s = jnp.concatenate([top[0], s], axis=1)
    cand_l = jnp.concatenate([top[1], lab], axis=1)
    s, i = jax.lax.top_k(cand_s, k)
    return s, jnp.take_along_axis(cand_l, i, axis=1)

  init = jax.lax.pcast((jnp.full((queries.shape[0], k), -jnp.inf, jnp.float32),
                        jnp.zeros((queries.shape[0], k), jnp.int32)), AXIS, to='varying')
  return jax.lax.fori_loop(0, -(-rows // m), body, init)


@functools.partial(jax.jit, static_argnames=('mesh', 'num_classes', 'k', 'chunk_size',
                                             'bank_chunk_size'))
def scores_sharded(bank, bank_labels, bank_ok, queries, temperature, *, mesh, num_classes, k,
                    chunk_size, bank_chunk_size):
  """Class scores [Rq, C] of every query row, sharded like the queries."""
  n = mesh.size

  def local(bank, bank_labels, bank_ok, queries, temperature):
    rows = queries.shape[0]
    c = max(1, min(-(-chunk_size // n), rows))  # This device's queries per chunk.

    def body(i, scores):
      start = jnp.minimum(i * c, rows - c)  # Overlapping last chunk: rewrites equal scores.
      q = _normalize(jax.lax.dynamic_slice_in_dim(queries, start, c))
      q_all = jax.lax.all_gather(q, AXIS, tiled=True)  # [n*c, D]: every device's chunk.
      top_s, top_l = _local_top_k(q_all, bank, bank_labels, bank_ok, k=k,
                                  bank_chunk=bank_chunk_size)
      # Block d of the rows (device d's queries) goes to device d: [c, n*k] candidates each.
      top_s = jax.lax.all_to_all(top_s, AXIS, 0, 1, tiled=True)
      top_l = jax.lax.all_to_all(top_l, AXIS, 0, 1, tiled=True)
      top_s, j = jax.lax.top_k(top_s, k)
      votes = _vote(top_s, jnp.take_along_axis(top_l, j, axis=1), num_classes=num_classes,
                    temperature=temperature)
      return jax.lax.dynamic_update_slice_in_dim(scores, votes, start, 0)

    init = jax.lax.pcast(jnp.zeros((rows, num_classes), jnp.float32), AXIS, to='varying')
    return jax.lax.fori_loop(0, -(-rows // c), body, init)

  return jax.shard_map(local, mesh=mesh, in_specs=(ROWS,) * 4 + (P(),), out_specs=ROWS)(
      bank, bank_labels, bank_ok, queries, temperature)


def knn_scores_sharded(bank: 'feature_store.Sharded', queries: 'feature_store.Sharded',
                       num_classes: int, mesh: jax.sharding.Mesh, *, k: int = 200,
                       temperature: float = 0.1, chunk_size: int = 1024,
                       bank_chunk_size: int = BANK_CHUNK) -> jax.Array:
  """Temperature-weighted kNN class scores [Rq, num_classes] float32 of every row of `queries`
  (sharded like them; padding rows hold garbage) against the real rows of `bank`.

  bank / queries: feature_store.Sharded with [R, D] features as outputs. k is clipped to the bank's
  size. `chunk_size` queries are scored at once (each device scores all of them against its bank
  shard, `bank_chunk_size` rows at a time).
  """
  k = int(max(1, min(k, bank.num_examples)))
  return scores_sharded(bank.outputs, bank.label, bank.mask > 0, queries.outputs,
                         jnp.float32(temperature), mesh=mesh, num_classes=num_classes, k=k,
                         chunk_size=int(chunk_size), bank_chunk_size=int(bank_chunk_size))


def knn_classify_sharded(bank: 'feature_store.Sharded', queries: 'feature_store.Sharded',
                         num_classes: int, mesh: jax.sharding.Mesh, *, k: int = 200,
                         temperature: float = 0.1, chunk_size: int = 1024,
                         bank_chunk_size: int = BANK_CHUNK) -> dict[str, float]:
  """kNN top-1/top-5 of `queries` against `bank` (both feature_store.Sharded, features as outputs);
  the same dict as knn_classify. Only the hit counts leave the devices."""
  feature_store.check_labels(bank, num_classes, 'kNN bank')
  feature_store.check_labels(queries, num_classes, 'kNN queries')
  scores = knn_scores_sharded(bank, queries, num_classes, mesh, k=k, temperature=temperature,
                              chunk_size=chunk_size, bank_chunk_size=bank_chunk_size)
  top1, top5 = feature_store.topk_accuracies(scores, queries, (1, 5))
  return {'top1': top1, 'top5': top5, 'k': int(max(1, min(k, bank.num_examples))),
          'temperature': float(temperature), 'num_train': int(bank.num_examples),
          'num_eval': int(queries.num_examples)}
