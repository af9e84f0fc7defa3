"""The paper's alternative contrastive losses (Table 2 / Table 4: NT-Logistic and margin triplet,
each optionally with semi-hard negative mining), and `contrastive`, the one dispatcher the train
step calls (loss.type 'nt_xent' goes to losses.nt_xent unchanged).

Both are computed like NT-Xent over the GLOBAL batch: every one of the 2N views is an anchor, its
positive is the other view of its pair, its negatives are the 2N-2 other views of the whole batch
(both views, as NT-Xent; the paper's Table 4 runs used only one view's negatives "for simplicity",
which it says "slightly impairs performance", so we keep NT-Xent's set). With u the anchor,
s(x) = u.x (cosine if hidden_norm), v+ the positive, V- the negatives, w a weighting over V-:
  nt_logistic:     l(u) = -log sig(s(v+)/tau) - sum_{v in V-} w_v log sig(-s(v)/tau)
  margin_triplet:  l(u) = sum_{v in V-} w_v max(s(v) - s(v+) + m, 0)          (no temperature)
  loss = (1/N) sum over the 2N anchors of l(u)   (both directions summed, as our NT-Xent)
Weighting: Table 2 writes each objective for ONE triplet (u, v+, v-). The paper states no
re-weighting, so we average the triplet objective over the anchor's triplets: w = 1/(2N-2) on all
negatives (positive and negative parts weigh the same, whatever N), or, with semi_hard, w = 1 on
the one mined negative.
Semi-hard (sec. 5.1, after Schroff et al. 2015: negatives "within the loss margin and closest in
distance, but farther than positive examples"): per anchor, the negative with the highest
similarity strictly below s(v+) (for margin_triplet the max(.,0) then keeps it only if within the
margin; NT-Logistic has no margin, so "below the positive" is the whole rule). If the anchor has
no such negative, it falls back to the negative of LOWEST similarity (the one nearest to being
semi-hard), as TF-addons' triplet_semihard_loss ("uses the largest negative distance instead").
The mining is a one-hot mask from argmax (static shapes; no gradient through the choice).
Metrics contrast_acc / contrast_entropy are NT-Xent's (ab block, logits s/tau), for every type.
"""

from typing import Optional

import jax
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import ml_collections

from simclr_jax import losses

LOSS_TYPES = ('nt_xent', 'nt_logistic', 'margin_triplet')


def _anchor_losses(cross, same, idx, kind, temperature, margin, semi_hard):
  """Sum over this block's anchors of l(u). cross: [n, N] sims to the other view (positive at
  column idx); same: [n, N] sims to the own view (self at column idx)."""
  big_n = cross.shape[1]
  sims = jnp.concatenate([cross, same], axis=1)  # [n, 2N]
  pos = jnp.take_along_axis(cross, idx[:, None], axis=1)  # [n, 1]
  neg = 1.0 - jax.nn.one_hot(idx, 2 * big_n) - jax.nn.one_hot(idx + big_n, 2 * big_n)
  if semi_hard:
    below = (neg > 0) & (sims < pos)
    closest_below = jnp.argmax(jnp.where(below, sims, -jnp.inf), axis=1)
    lowest = jnp.argmin(jnp.where(neg > 0, sims, jnp.inf), axis=1)
    pick = jnp.where(jnp.any(below, axis=1), closest_below, lowest)
    w = jax.nn.one_hot(pick, 2 * big_n) * neg  # * neg: N = 1 has no negative at all.
  else:
    w = neg / jnp.maximum(jnp.sum(neg, axis=1, keepdims=True), 1.0)
  w = jax.lax.stop_gradient(w)
  if kind == 'nt_logistic':
    per = (-jax.nn.log_sigmoid(pos[:, 0] / temperature)
           - jnp.sum(w * jax.nn.log_sigmoid(-sims / temperature), axis=1))
  elif kind == 'margin_triplet':
    per = jnp.sum(w * jax.nn.relu(sims - pos + margin), axis=1)
  else:
    raise ValueError(f'unknown loss type {kind!r}; allowed: {LOSS_TYPES[1:]}')
  return jnp.sum(per)


def _local(z_a, z_b, kind, temperature, margin, semi_hard, hidden_norm, axis_name):
  """This shard's rows (as losses._local_nt_xent): sums, reduced by the caller."""
  z_a, z_b, all_a, all_b, idx = losses.local_views(z_a, z_b, hidden_norm, axis_name)
  hi = jax.lax.Precision.HIGHEST
  s_ab = jnp.matmul(z_a, all_b.T, precision=hi)
  s_aa = jnp.matmul(z_a, all_a.T, precision=hi)
  s_ba = jnp.matmul(z_b, all_a.T, precision=hi)
  s_bb = jnp.matmul(z_b, all_b.T, precision=hi)
  args = (idx, kind, temperature, margin, semi_hard)
  logits_ab = s_ab / temperature
  prob_ab = jax.nn.softmax(logits_ab, axis=-1)
  return {
      'loss': _anchor_losses(s_ab, s_aa, *args) + _anchor_losses(s_ba, s_bb, *args),
      'contrast_acc': jnp.sum((jnp.argmax(logits_ab, axis=-1) == idx).astype(jnp.float32)),
      'contrast_entropy': -jnp.sum(prob_ab * jnp.log(prob_ab + 1e-8)),
  }


def pair_loss(z_a: jax.Array, z_b: jax.Array, kind: str, temperature: float, margin: float = 0.4,
              semi_hard: bool = False, hidden_norm: bool = True,
              mesh: Optional[jax.sharding.Mesh] = None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """NT-Logistic (kind='nt_logistic') or margin triplet ('margin_triplet') of the global batch.

  Args and returns as losses.nt_xent; `margin` is m (margin_triplet only), `temperature` scales
  NT-Logistic's logits and the metrics' softmax, `semi_hard` mines one negative per anchor.
  """
  if z_a.shape != z_b.shape or z_a.ndim != 2:
    raise ValueError(f'{kind} wants two [N, d] arrays of one shape; got {z_a.shape}, {z_b.shape}.')
  args = (kind, temperature, margin, semi_hard, hidden_norm)
  if mesh is None or mesh.size == 1:
    sums = _local(z_a, z_b, *args, None)
  else:
    def per_shard(a, b):
      return jax.lax.psum(_local(a, b, *args, losses.DATA_AXIS), losses.DATA_AXIS)

    spec = P(losses.DATA_AXIS)
    sums = jax.shard_map(per_shard, mesh=mesh, in_specs=(spec, spec), out_specs=P())(z_a, z_b)
  big_n = z_a.shape[0]
  return sums['loss'] / big_n, {'contrast_acc': sums['contrast_acc'] / big_n,
                                'contrast_entropy': sums['contrast_entropy'] / big_n}


def contrastive(z_a: jax.Array, z_b: jax.Array, config_loss: ml_collections.ConfigDict,
                mesh: Optional[jax.sharding.Mesh] = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss named by config.loss.type (default 'nt_xent': exactly losses.nt_xent)."""
  c = config_loss
  kind = c.get('type', 'nt_xent')
  if kind == 'nt_xent':
    return losses.nt_xent(z_a, z_b, c.temperature, c.hidden_norm, mesh=mesh)
  return pair_loss(z_a, z_b, kind, c.temperature, c.get('margin', 0.4), c.get('semi_hard', False),
                   c.hidden_norm, mesh=mesh)
