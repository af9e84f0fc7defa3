"""Linear probes on frozen features: the sharded minibatch probe training uses, and its
single-device full-batch reference.

`linear_probe_sharded` trains multinomial logistic regression on standardised features that stay
sharded over the devices (Sharded): each Adam step every device scores only its rows
of the step's minibatch and the gradients are summed, so per-device memory is independent of the
split size. `linear_probe` (host arrays, one device, full batch) is what it is tested against.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax


from simclr_jax.data import sources
from simclr_jax.evaluators import feature_store

AXIS, ROWS, COUNT_CHUNK = feature_store.AXIS, feature_store.ROWS, feature_store.COUNT_CHUNK
Sharded, chunked = feature_store.Sharded, feature_store.chunked
topk_accuracy = feature_store.topk_accuracy


def _fmix32(h):
  """MurmurHash3's finaliser: a bijective mix of uint32."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def minibatch_of(index: jax.Array, epoch: jax.Array, seed: int, steps_per_epoch: int
                 ) -> jax.Array:
  """Which step of `epoch` example `index` (its stored position) is drawn in: a hash, so every
  epoch is a fresh random partition of the split into `steps_per_epoch` minibatches, and the
  draw depends on the example, not on which device holds it (1 x 8 devices = 2 x 4)."""
  key = _fmix32(epoch.astype(jnp.uint32) * jnp.uint32(0x9E3779B9) + jnp.uint32(seed % 2**32))
  h = _fmix32(index.astype(jnp.uint32) * jnp.uint32(0x85EBCA77) ^ key)
  return (h % jnp.uint32(steps_per_epoch)).astype(jnp.int32)


def probe_capacity(rows_per_device: int, steps_per_epoch: int) -> int:
  """Rows one device contributes to a probe minibatch, at most: the mean of the binomial count
  plus 6 standard deviations (a minibatch overflows it with probability < 1e-9; the excess would
  wait for the next epoch)."""
  mean = rows_per_device / steps_per_epoch
  return int(min(rows_per_device, np.ceil(mean + 6 * np.sqrt(mean) + 2)))


@functools.partial(jax.jit, static_argnames=('mesh',))
def moments(x, mask, *, mesh):
  """Mean and population std [D] of the real rows (two passes in chunks, float32), replicated."""
  def local(x, mask):
    def sums(centre):
      def fn(start, c, fresh, acc):
        m = (jax.lax.dynamic_slice_in_dim(mask, start, c) * fresh)[:, None]
        v = jax.lax.dynamic_slice_in_dim(x, start, c)
        if centre is not None:
          v = jnp.square(v - centre)
        return acc + jnp.sum(v * m, axis=0)

      return jax.lax.psum(
          chunked(x.shape[0], fn, jnp.zeros((x.shape[1],), jnp.float32)),
          AXIS)

    n = jax.lax.psum(jnp.sum(mask), AXIS)
    mean = sums(None) / n
    return mean, jnp.sqrt(sums(mean) / n)
  return jax.shard_map(local, mesh=mesh, in_specs=(ROWS, ROWS), out_specs=P())(x, mask)


@functools.partial(jax.jit, static_argnames=(
    'mesh', 'num_classes', 'steps', 'steps_per_epoch', 'capacity', 'seed'))
def fit_sharded(x, label, mask, index, mean, std, learning_rate, weight_decay, *, mesh,
                 num_classes, steps, steps_per_epoch, capacity, seed):
  """Multinomial logistic regression on standardised rows by minibatch Adam (cosine decay to 0).
  Each step, every device standardises and scores only its rows of the step's minibatch
  (<= `capacity`), and gradients are summed over devices: the parameters stay replicated."""
  def local(x, label, mask, index, mean, std, learning_rate, weight_decay):
    tx = optax.adam(optax.cosine_decay_schedule(1.0, steps))
    params = {'w': jnp.zeros((x.shape[1], num_classes), jnp.float32),
              'b': jnp.zeros((num_classes,), jnp.float32)}
    real = mask > 0

    def body(t, carry):
      p, s = carry
      chosen = real & (minibatch_of(index, t // steps_per_epoch, seed, steps_per_epoch)
                       == t % steps_per_epoch)
      rows = jnp.nonzero(chosen, size=capacity, fill_value=0)[0]
      use = (jnp.arange(capacity) < jnp.sum(chosen)).astype(jnp.float32)
      xb = (x[rows] - mean) / std

      def loss_sum(p):
        logits = xb @ p['w'] + p['b']
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, label[rows])
        return jnp.sum(ce * use)

      g = jax.lax.psum(jax.grad(loss_sum)(p), AXIS)
      n = jnp.maximum(jax.lax.psum(jnp.sum(use), AXIS), 1.0)
      g = {'w': g['w'] / n + weight_decay * p['w'], 'b': g['b'] / n}
      u, s = tx.update(g, s, p)
      u = jax.tree.map(lambda v: learning_rate * v, u)
      return optax.apply_updates(p, u), s

    p, _ = jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))
    return p
  return jax.shard_map(local, mesh=mesh, in_specs=(ROWS,) * 4 + (P(),) * 4, out_specs=P())(
      x, label, mask, index, mean, std, learning_rate, weight_decay)


@functools.partial(jax.jit, static_argnames=('mesh', 'ks'))
def probe_correct(x, label, mask, mean, std, params, *, mesh, ks):
  """Top-k hits of the probe over the real rows, scored COUNT_CHUNK rows per device at a time
  (the [rows, classes] logits are never whole on a device)."""
  def local(x, label, mask, mean, std, params):

    def fn(start, c, fresh, acc):
      part = lambda v: jax.lax.dynamic_slice_in_dim(v, start, c)
      logits = (part(x) - mean) / std @ params['w'] + params['b']
      return acc + feature_store.hits(logits, part(label), part(mask) * fresh, ks)

    return jax.lax.psum(
        chunked(x.shape[0], fn, jnp.zeros((len(ks),), jnp.float32)),
        AXIS)
  return jax.shard_map(local, mesh=mesh, in_specs=(ROWS,) * 3 + (P(),) * 3, out_specs=P())(
      x, label, mask, mean, std, params)


def linear_probe_sharded(train: Sharded, test: Sharded, num_classes: int,
                         mesh: jax.sharding.Mesh, *, steps: int = 500, batch_size: int = 1024,
                         learning_rate: float = 0.01, weight_decay: float = 1e-4, seed: int = 0
                         ) -> dict[str, float]:
  """Linear classifier on standardised features of `train` (rows sharded over the mesh), scored
  on `test`; returns top-1/top-5 (train and test) like `linear_probe`.

  `steps` minibatch Adam steps of about `batch_size` examples: each epoch partitions the real
  rows into round(n / batch_size) minibatches by a hash of (example, epoch). Per-device memory:
  the feature shards, D x C parameters and Adam state, and `probe_capacity` rows of features and
  logits per step: independent of the number of examples.
  """
  feature_store.check_labels(train, num_classes, 'linear probe training rows')
  feature_store.check_labels(test, num_classes, 'linear probe test rows')
  n = train.num_examples
  spe = max(1, int(round(n / batch_size)))
  cap = probe_capacity(train.outputs.shape[0] // mesh.size, spe)
  mean, std = moments(train.outputs, train.mask, mesh=mesh)
  std = std + 1e-6
  params = fit_sharded(train.outputs, train.label, train.mask, train.index, mean, std,
                        jnp.float32(learning_rate), jnp.float32(weight_decay), mesh=mesh,
                        num_classes=num_classes, steps=int(steps), steps_per_epoch=spe,
                        capacity=cap, seed=int(seed))
  ks = (1, min(5, num_classes))
  tr = probe_correct(train.outputs, train.label, train.mask, mean, std, params, mesh=mesh, ks=ks)
  te = probe_correct(test.outputs, test.label, test.mask, mean, std, params, mesh=mesh, ks=ks)
  tr, te = np.asarray(tr), np.asarray(te)
  return {'train_top1': float(tr[0]) / n, 'top1': float(te[0]) / test.num_examples,
          'top5': float(te[1]) / test.num_examples, 'num_train': int(n),
          'num_eval': int(test.num_examples)}


# ---- the single-device, full-batch reference probe (host arrays; small sets and tests) ----


@functools.partial(jax.jit, static_argnames=('num_classes', 'steps'))
def _fit(x, y, *, num_classes, steps, learning_rate, weight_decay):
  """Full-batch multinomial logistic regression with Adam; returns (w, b)."""
  params = {'w': jnp.zeros((x.shape[1], num_classes)), 'b': jnp.zeros((num_classes,))}
  tx = optax.adam(learning_rate)

  def loss_fn(p):
    logits = x @ p['w'] + p['b']
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + 0.5 * weight_decay * jnp.sum(p['w'] ** 2)

  def body(_, carry):
    p, s = carry
    g = jax.grad(loss_fn)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  params, _ = jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))
  return params


def linear_probe(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                 num_classes: int, *, steps: int = 500, learning_rate: float = 0.01,
                 weight_decay: float = 1e-4) -> dict[str, float]:
  """Fits a linear classifier on standardised train features on one device, full batch (the
  [n, C] logits and their gradient whole); returns top-1/top-5 (train, test). The reference for
  linear_probe_sharded; too big for ImageNet."""
  (xtr, ytr), (xte, yte) = train, test
  sources.check_labels(ytr, num_classes, 'linear_probe train labels')
  sources.check_labels(yte, num_classes, 'linear_probe test labels')
  mean = xtr.mean(0, keepdims=True)
  std = xtr.std(0, keepdims=True) + 1e-6
  xtr = (xtr - mean) / std
  xte = (xte - mean) / std
  p = _fit(jnp.asarray(xtr, jnp.float32), jnp.asarray(ytr, jnp.int32), num_classes=num_classes,
           steps=steps, learning_rate=learning_rate, weight_decay=weight_decay)
  w, b = np.asarray(p['w']), np.asarray(p['b'])
  tr_logits, te_logits = xtr @ w + b, xte @ w + b
  return {'train_top1': topk_accuracy(tr_logits, ytr, 1),
          'top1': topk_accuracy(te_logits, yte, 1), 'top5': topk_accuracy(te_logits, yte, 5),
          'num_train': int(len(ytr)), 'num_eval': int(len(yte))}
