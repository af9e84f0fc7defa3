"""Frozen-feature evaluation: extract features of a whole split, fit a linear probe, score it.

Used during and after pretraining (online probe logits and kNN features via `make_outputs_fn`)
and for the results table (SimCLR encoder vs the same network at random
initialisation vs raw pixels). Feature extraction runs the encoder in inference mode (BN moving
averages) and covers every example once: the last batch is padded and the padding masked out.
"""

import functools
from typing import Any, Callable

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from simclr_jax import sharding
from simclr_jax import steps
from simclr_jax.data import input_pipeline


def extract(config: ml_collections.ConfigDict, split: str, num_examples: int,
            mesh: jax.sharding.Mesh, embed_fn: Callable[[jax.Array], Any]
            ) -> tuple[Any, np.ndarray]:
  """Runs `embed_fn` (jitted, images -> [B, D], or a dict of [B, ...] arrays) over `split`;
  returns (outputs of the same structure with every example once, labels) on host, in the
  split's stored order whatever the number of processes."""
  feats, labels, order = [], [], []
  for batch in input_pipeline.eval_batches(
      config, split, global_batch=config.eval.batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), num_examples=num_examples):
    out = embed_fn(sharding.global_batch(batch['image'], mesh))
    rest = sharding.global_batch({k: batch[k] for k in ('mask', 'label', 'index')}, mesh)
    out, rest = jax.tree.map(
        lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), (out, rest))
    keep = rest['mask'] > 0
    feats.append(jax.tree.map(lambda x, keep=keep: x[keep], out))
    labels.append(rest['label'][keep])
    order.append(rest['index'][keep])
  perm = np.argsort(np.concatenate(order), kind='stable')
  return (jax.tree.map(lambda *xs: np.concatenate(xs)[perm], *feats),
          np.concatenate(labels)[perm])


def make_embed_fn(apply_fn: Callable, mesh: jax.sharding.Mesh, output: str = 'features'
                  ) -> Callable[[dict[str, Any], jax.Array], jax.Array]:
  """jit(variables, images) -> outputs[output], batch-sharded; compiled once, reused for any
  variables of the same structure (trained and random-init encoders share it)."""
  return jax.jit(functools.partial(steps.embed_step, apply_fn=apply_fn, output=output),
                 out_shardings=sharding.batch_sharded(mesh))


def make_outputs_fn(apply_fn: Callable, mesh: jax.sharding.Mesh,
                    outputs: tuple[str, ...] = ('features', 'sup_logits')
                    ) -> Callable[[dict[str, Any], jax.Array], dict[str, jax.Array]]:
  """jit(variables, images) -> {name: outputs[name]} for the `outputs` the model produces
  (no 'sup_logits' without the online probe); frozen forward pass, batch-sharded."""
  def fn(variables, images):
    out = apply_fn(variables, steps.to_float_images(images), train=False)
    return {k: out[k] for k in outputs if k in out}
  return jax.jit(fn, out_shardings=sharding.batch_sharded(mesh))


def pixels(config: ml_collections.ConfigDict, split: str, num_examples: int,
           mesh: jax.sharding.Mesh) -> tuple[np.ndarray, np.ndarray]:
  """Raw eval-preprocessed pixels, flattened: the baseline any representation should beat."""
  return extract(config, split, num_examples, mesh,
                 lambda x: jnp.reshape(steps.to_float_images(x), (x.shape[0], -1)))


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


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
  k = min(k, logits.shape[1])
  top = np.argsort(-logits, axis=1)[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=1)))


def linear_probe(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                 num_classes: int, *, steps: int = 500, learning_rate: float = 0.01,
                 weight_decay: float = 1e-4) -> dict[str, float]:
  """Fits a linear classifier on standardised train features; returns top-1/top-5 (train, test)."""
  (xtr, ytr), (xte, yte) = train, test
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
