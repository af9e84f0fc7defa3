"""NT-Xent (the SimCLR contrastive loss) over the GLOBAL batch, and the supervised loss.

Value and metrics are the official ones (google-research/simclr, tf2/objective.py):
  loss = mean_i [CE(i; [ab_i, aa_i]) + CE(i; [ba_i, bb_i])]
i.e. the SUM of both directions (twice the paper's 1/(2N) normalisation; weight decay was tuned at
this scale). Each anchor sees 1 positive and the 2N-2 other views of the global batch; the
self-similarity in aa/bb is masked by subtracting a large finite number (not -inf, which would give
NaN gradients through 0 * inf). All maths is float32 whatever the model's dtype.

With a mesh, each device computes only its own rows of the logits ([2n, 2N] for n local pairs),
against all-gathered embeddings; gradients flow back through the gather (its transpose is a
reduce-scatter). Without one, the same formula runs on whole arrays and XLA chooses the layout.
"""

from typing import Optional

import jax
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import optax

LARGE_NUM = 1e9
DATA_AXIS = 'data'


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / sqrt(max(sum x^2, eps)), as tf.math.l2_normalize."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def local_views(z_a, z_b, hidden_norm, axis_name):
  """(z_a, z_b, all_a, all_b, idx) of this shard, in float32: its own rows (l2-normalised if
  hidden_norm), every shard's rows gathered over `axis_name` (None: no mesh), and the global
  index of each own row (the column of its positive). Shared by every contrastive loss."""
  z_a = z_a.astype(jnp.float32)
  z_b = z_b.astype(jnp.float32)
  if hidden_norm:
    z_a, z_b = l2_normalize(z_a), l2_normalize(z_b)
  n = z_a.shape[0]
  if axis_name is None:
    all_a, all_b, offset = z_a, z_b, 0
  else:
    all_a = jax.lax.all_gather(z_a, axis_name, tiled=True)
    all_b = jax.lax.all_gather(z_b, axis_name, tiled=True)
    offset = jax.lax.axis_index(axis_name) * n
  return z_a, z_b, all_a, all_b, offset + jnp.arange(n)


def _local_nt_xent(z_a, z_b, temperature, hidden_norm, axis_name):
  """Rows of the loss owned by this shard. Returns sums (not means) to be reduced by the caller."""
  z_a, z_b, all_a, all_b, idx = local_views(z_a, z_b, hidden_norm, axis_name)
  big_n = all_a.shape[0]
  self_mask = jax.nn.one_hot(idx, big_n, dtype=jnp.float32) * LARGE_NUM
  hi = jax.lax.Precision.HIGHEST
  logits_aa = jnp.matmul(z_a, all_a.T, precision=hi) / temperature - self_mask
  logits_bb = jnp.matmul(z_b, all_b.T, precision=hi) / temperature - self_mask
  logits_ab = jnp.matmul(z_a, all_b.T, precision=hi) / temperature
  logits_ba = jnp.matmul(z_b, all_a.T, precision=hi) / temperature
  loss_a = optax.softmax_cross_entropy_with_integer_labels(
      jnp.concatenate([logits_ab, logits_aa], axis=1), idx)
  loss_b = optax.softmax_cross_entropy_with_integer_labels(
      jnp.concatenate([logits_ba, logits_bb], axis=1), idx)
  prob_ab = jax.nn.softmax(logits_ab, axis=-1)
  sums = {
      'loss': jnp.sum(loss_a + loss_b),
      'contrast_acc': jnp.sum((jnp.argmax(logits_ab, axis=-1) == idx).astype(jnp.float32)),
      # Official definition: -sum p log(p + 1e-8) over the ab block only.
      'contrast_entropy': -jnp.sum(prob_ab * jnp.log(prob_ab + 1e-8)),
  }
  return sums, big_n


def nt_xent(z_a: jax.Array, z_b: jax.Array, temperature: float, hidden_norm: bool = True,
            mesh: Optional[jax.sharding.Mesh] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """NT-Xent of the global batch.

  Args:
    z_a, z_b: [N, d] projections of view 1 and view 2 of the global batch (pair i = row i).
      May be sharded over `mesh`'s 'data' axis.
    temperature: tau > 0.
    hidden_norm: L2-normalise rows first (cosine similarity).
    mesh: if given, compute row-blocks per device with an explicit all-gather (memory O(N/D * N)).
  Returns:
    (loss float32 scalar, {'contrast_acc', 'contrast_entropy'} float32 scalars).
  """
  if z_a.shape != z_b.shape or z_a.ndim != 2:
    raise ValueError(f'nt_xent wants two [N, d] arrays of one shape; got {z_a.shape}, {z_b.shape}.')
  if mesh is None or mesh.size == 1:
    sums, big_n = _local_nt_xent(z_a, z_b, temperature, hidden_norm, None)
  else:
    def per_shard(a, b):
      return jax.lax.psum(_local_nt_xent(a, b, temperature, hidden_norm, DATA_AXIS)[0], DATA_AXIS)

    big_n = z_a.shape[0]
    sums = jax.shard_map(per_shard, mesh=mesh, in_specs=(P(DATA_AXIS), P(DATA_AXIS)),
                         out_specs=P())(z_a, z_b)
  loss = sums['loss'] / big_n
  metrics = {'contrast_acc': sums['contrast_acc'] / big_n,
             'contrast_entropy': sums['contrast_entropy'] / big_n}
  return loss, metrics


def supervised_loss(logits: jax.Array, labels: jax.Array,
                    mask: Optional[jax.Array] = None) -> jax.Array:
  """Mean softmax cross-entropy over (unmasked) examples, in float32. labels: [B] int."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  if mask is None:
    return jnp.mean(ce)
  mask = mask.astype(jnp.float32)
  return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float,
                      tau_squared: bool = False) -> jax.Array:
  """SimCLRv2's distillation loss (paper eq. 2), mean over the batch, in float32:
  -sum_y P_T(y|x; tau) log P_S(y|x; tau), both softmaxes at `temperature`. logits: [B, C].

  It equals KL(P_T || P_S) + H(P_T): the teacher's entropy is constant for the student, so the
  gradients are KL's. `tau_squared` multiplies by tau^2 as the official Colab does (Hinton et
  al.'s factor that keeps the soft-label gradients' scale comparable to a hard-label loss's)."""
  t = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  loss = jnp.mean(-jnp.sum(t * log_s, axis=-1))
  return loss * temperature ** 2 if tau_squared else loss
