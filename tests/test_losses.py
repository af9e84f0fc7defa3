"""NT-Xent checked against an independent float64 NumPy re-derivation of the official loss.

Reference (google-research/simclr tf2/objective.py, metrics.py; see the spec section 4):
  u = l2_normalize(z_a), v = l2_normalize(z_b)      x / sqrt(max(sum x^2, 1e-12))
  row i of view a: logits [u_i . v_j / tau]_j  ++  [u_i . u_j / tau - 1e9 * [i == j]]_j
  row i of view b: logits [v_i . u_j / tau]_j  ++  [v_i . v_j / tau - 1e9 * [i == j]]_j
  positive of row i = column i (of the first, "ab"/"ba", block)
  loss = mean_i (CE_a,i + CE_b,i)                   (SUM of both directions, mean over anchors)
  contrast_acc = mean_i [argmax_j ab_ij == i]
  contrast_entropy = mean_i -sum_j p_ij log(p_ij + 1e-8), p = softmax(ab_i)
Gradients of the reference are derived by hand (softmax - onehot, then back through the dot
products and the normalisation) and the derivation itself is checked by central finite
differences in float64, so the JAX gradients are compared with a reference that is known good.
Nothing here calls the library to produce an expected value.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from simclr_jax import contrastive_losses
from simclr_jax import losses
from simclr_jax import sharding

LARGE = 1e9


# ----------------------------------------------------------------------------- NumPy reference

def _normalize(x):
  r = np.sqrt(np.maximum(np.sum(x * x, axis=-1, keepdims=True), 1e-12))
  return x / r, r


def _softmax(l):
  l = l - l.max(axis=-1, keepdims=True)
  e = np.exp(l)
  return e / e.sum(axis=-1, keepdims=True)


def ref_nt_xent(za, zb, tau, hidden_norm=True, mask=True):
  """Official NT-Xent in float64. Returns (loss, acc, entropy, grad_za, grad_zb)."""
  za = np.asarray(za, np.float64)
  zb = np.asarray(zb, np.float64)
  n = za.shape[0]
  if hidden_norm:
    u, ru = _normalize(za)
    v, rv = _normalize(zb)
  else:
    u, v = za, zb
  self_mask = np.eye(n) * LARGE if mask else np.zeros((n, n))
  ab = u @ v.T / tau
  aa = u @ u.T / tau - self_mask
  ba = v @ u.T / tau
  bb = v @ v.T / tau - self_mask
  la = np.concatenate([ab, aa], 1)
  lb = np.concatenate([ba, bb], 1)
  pa, pb = _softmax(la), _softmax(lb)
  idx = np.arange(n)
  ce_a = -np.log(pa[idx, idx])
  ce_b = -np.log(pb[idx, idx])
  loss = np.mean(ce_a + ce_b)
  acc = np.mean(np.argmax(ab, 1) == idx)
  p = _softmax(ab)
  entropy = np.mean(-np.sum(p * np.log(p + 1e-8), 1))
  # d loss / d logits = (softmax - onehot) / n for each direction.
  onehot = np.zeros((n, 2 * n))
  onehot[idx, idx] = 1.0
  ga = (pa - onehot) / n
  gb = (pb - onehot) / n
  g_ab, g_aa = ga[:, :n], ga[:, n:]
  g_ba, g_bb = gb[:, :n], gb[:, n:]
  # ab = u v^T / tau, aa = u u^T / tau, ba = v u^T / tau, bb = v v^T / tau.
  du = (g_ab @ v + g_aa @ u + g_aa.T @ u + g_ba.T @ v) / tau
  dv = (g_ab.T @ u + g_ba @ u + g_bb @ v + g_bb.T @ v) / tau
  if hidden_norm:  # u = x / |x|:  dL/dx = (g - u (u . g)) / |x|
    dza = (du - u * np.sum(u * du, -1, keepdims=True)) / ru
    dzb = (dv - v * np.sum(v * dv, -1, keepdims=True)) / rv
  else:
    dza, dzb = du, dv
  return loss, acc, entropy, dza, dzb


def _fd_grad(f, x, eps=1e-6):
  g = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[i] += eps
    xm[i] -= eps
    g[i] = (f(xp) - f(xm)) / (2 * eps)
  return g


def _jax_loss_and_grads(za, zb, tau, hidden_norm=True, mesh=None):
  def f(a, b):
    loss, metrics = losses.nt_xent(a, b, tau, hidden_norm, mesh=mesh)
    return loss, metrics
  (loss, metrics), (ga, gb) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(za, zb)
  return (float(loss), float(metrics['contrast_acc']), float(metrics['contrast_entropy']),
          np.asarray(ga), np.asarray(gb))


def _inputs(n, d, seed, scale=1.0):
  rng = np.random.default_rng(seed)
  za = (rng.normal(size=(n, d)) * scale).astype(np.float32)
  zb = (za + 0.7 * rng.normal(size=(n, d)) * scale).astype(np.float32)  # correlated views.
  return za, zb


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize('hidden_norm', [True, False])
def test_reference_gradient_matches_finite_differences(hidden_norm):
  """The hand-derived reference gradient is itself right (float64 central differences)."""
  za, zb = _inputs(5, 4, seed=1)
  za, zb = za.astype(np.float64), zb.astype(np.float64)
  tau = 0.3
  _, _, _, ga, gb = ref_nt_xent(za, zb, tau, hidden_norm)
  fd_a = _fd_grad(lambda x: ref_nt_xent(x, zb, tau, hidden_norm)[0], za)
  fd_b = _fd_grad(lambda x: ref_nt_xent(za, x, tau, hidden_norm)[0], zb)
  np.testing.assert_allclose(ga, fd_a, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(gb, fd_b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize('n,d', [(1, 3), (2, 8), (5, 16), (16, 32)])
@pytest.mark.parametrize('tau', [0.1, 0.5, 1.0])
@pytest.mark.parametrize('hidden_norm', [True, False])
def test_value_metrics_and_grads_match_reference(n, d, tau, hidden_norm):
  # Without normalisation keep |z| small so that tau=0.1 logits stay in a sane range.
  za, zb = _inputs(n, d, seed=n * 100 + d, scale=1.0 if hidden_norm else 0.3)
  ref = ref_nt_xent(za, zb, tau, hidden_norm)
  got = _jax_loss_and_grads(za, zb, tau, hidden_norm)
  np.testing.assert_allclose(got[0], ref[0], rtol=2e-5, atol=1e-6)
  assert got[1] == pytest.approx(ref[1], abs=1e-7)
  np.testing.assert_allclose(got[2], ref[2], rtol=2e-5, atol=1e-6)
  scale_a = np.abs(ref[3]).max() + 1e-12
  scale_b = np.abs(ref[4]).max() + 1e-12
  np.testing.assert_allclose(got[3], ref[3], rtol=1e-4, atol=1e-5 * scale_a)
  np.testing.assert_allclose(got[4], ref[4], rtol=1e-4, atol=1e-5 * scale_b)


def test_hand_computed_two_pairs():
  """Two pairs, tau = 0.5, worked out by hand.

  z_a = [[2, 0], [0, 0.5]]  -> u = [[1, 0], [0, 1]]
  z_b = [[3, 4], [8, -6]]   -> v = [[0.6, 0.8], [0.8, -0.6]]      (|v_0| = 5, |v_1| = 10)
  ab = u v^T / 0.5 = [[1.2, 1.6], [1.6, -1.2]];  u_0.u_1 = 0 and v_0.v_1 = 0.48 - 0.48 = 0,
  so aa = bb = [[-1e9, 0], [0, -1e9]] (diagonal masked); ba = v u^T / 0.5 = ab^T = ab.
  Row a0: logits [1.2, 1.6 | -1e9, 0], positive 1.2:
      CE = log(e^1.2 + e^1.6 + e^0) - 1.2 = log(3.320117 + 4.953032 + 1) - 1.2 = 1.027123
  Row a1: logits [1.6, -1.2 | 0, -1e9], positive -1.2:
      CE = log(4.953032 + 0.301194 + 1) + 1.2 = 3.033257
  Rows b0, b1 have the same logits (ba = ab, bb = aa), so the same CEs.
  loss = mean_i(CE_a,i + CE_b,i) = (2 * 1.027123 + 2 * 3.033257) / 2 = 4.060381
  contrast_acc: argmax row 0 = column 1 (wrong), row 1 = column 0 (wrong) -> 0.0
  contrast_entropy: softmax([1.2, 1.6]) = [0.401312, 0.598688] -> H = 0.673540;
      softmax([1.6, -1.2]) = [0.942676, 0.057324] -> H = 0.219540;  mean = 0.446540
  """
  za = jnp.array([[2.0, 0.0], [0.0, 0.5]])
  zb = jnp.array([[3.0, 4.0], [8.0, -6.0]])
  loss, m = losses.nt_xent(za, zb, 0.5, True)
  assert float(loss) == pytest.approx(4.060381, abs=2e-6)
  assert float(m['contrast_acc']) == 0.0
  assert float(m['contrast_entropy']) == pytest.approx(0.446540, abs=2e-6)
  # And swapping the views' rows so that each positive is the larger logit: acc becomes 1.
  _, m2 = losses.nt_xent(za, zb[::-1], 0.5, True)
  assert float(m2['contrast_acc']) == 1.0


def test_loss_is_sum_of_both_directions_not_mean():
  """Official scale: identical views, 2 orthogonal pairs, tau = 1. Each row: logits
  [1, 0 | -1e9, 0] -> CE = log(e + 2) - 1 = 0.551445; loss = (4 * 0.551445) / 2 = 1.102889.
  The paper's symmetric 1/(2N) mean would give half of that (0.551445)."""
  z = jnp.eye(2)
  loss, _ = losses.nt_xent(z, z, 1.0, True)
  assert float(loss) == pytest.approx(2 * (np.log(np.e + 2) - 1), abs=1e-6)
  assert float(loss) == pytest.approx(1.102889, abs=1e-6)


@pytest.mark.parametrize('tau', [0.1, 0.5])
def test_self_similarity_is_masked(tau):
  """With identical views the unmasked self-logit u_i.u_i/tau equals the positive logit, so a
  missing mask would change the loss a lot (and contrast_acc would be unaffected). The loss must
  equal the masked reference and be far from the unmasked one; gradients must be finite."""
  rng = np.random.default_rng(0)
  z = rng.normal(size=(8, 16)).astype(np.float32)
  masked = ref_nt_xent(z, z, tau, True, mask=True)
  unmasked = ref_nt_xent(z, z, tau, True, mask=False)
  got = _jax_loss_and_grads(z, z, tau, True)
  np.testing.assert_allclose(got[0], masked[0], rtol=2e-5)
  assert abs(unmasked[0] - masked[0]) > 0.5, (unmasked[0], masked[0])
  assert abs(got[0] - unmasked[0]) > 0.5
  assert np.all(np.isfinite(got[3])) and np.all(np.isfinite(got[4]))
  np.testing.assert_allclose(got[3], masked[3], rtol=1e-4, atol=1e-5 * np.abs(masked[3]).max())


def test_invariant_to_permuting_pairs():
  za, zb = _inputs(12, 8, seed=3)
  perm = np.random.default_rng(4).permutation(12)
  l1, a1, e1, ga1, gb1 = _jax_loss_and_grads(za, zb, 0.2)
  l2, a2, e2, ga2, gb2 = _jax_loss_and_grads(za[perm], zb[perm], 0.2)
  assert l2 == pytest.approx(l1, rel=1e-6)
  assert a2 == pytest.approx(a1, abs=1e-7)
  assert e2 == pytest.approx(e1, rel=1e-6)
  np.testing.assert_allclose(ga2, ga1[perm], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(gb2, gb1[perm], rtol=1e-5, atol=1e-7)
  # Permuting only one view breaks the pairing, so the loss must change.
  l3 = _jax_loss_and_grads(za, zb[perm], 0.2)[0]
  assert abs(l3 - l1) > 0.1


@pytest.mark.parametrize('n,tau,hidden_norm', [(16, 0.1, True), (32, 0.5, True), (32, 0.5, False)])
def test_sharded_equals_unsharded_and_reference(n, tau, hidden_norm):
  """8-device mesh (row blocks + all-gather) vs whole arrays on one device vs NumPy. The grads
  match only if gradients flow back through the all-gather to the other devices' rows, and the
  value matches only if each anchor sees the negatives of the GLOBAL batch."""
  mesh = sharding.make_mesh()
  assert mesh.size == 8
  za, zb = _inputs(n, 24, seed=n, scale=1.0 if hidden_norm else 0.3)
  sa = jax.device_put(za, sharding.batch_sharded(mesh))
  sb = jax.device_put(zb, sharding.batch_sharded(mesh))
  assert len(sa.sharding.device_set) == 8
  sharded = _jax_loss_and_grads(sa, sb, tau, hidden_norm, mesh=mesh)
  whole = _jax_loss_and_grads(za, zb, tau, hidden_norm, mesh=None)
  ref = ref_nt_xent(za, zb, tau, hidden_norm)
  for got in (sharded, whole):
    np.testing.assert_allclose(got[0], ref[0], rtol=2e-5)
    assert got[1] == pytest.approx(ref[1], abs=1e-7)
    np.testing.assert_allclose(got[2], ref[2], rtol=2e-5)
    np.testing.assert_allclose(got[3], ref[3], rtol=1e-4, atol=1e-5 * np.abs(ref[3]).max())
    np.testing.assert_allclose(got[4], ref[4], rtol=1e-4, atol=1e-5 * np.abs(ref[4]).max())
  np.testing.assert_allclose(sharded[0], whole[0], rtol=1e-6)
  np.testing.assert_allclose(sharded[3], whole[3], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(sharded[4], whole[4], rtol=1e-5, atol=1e-7)
  # Power check: a device-local loss (negatives only from its own 1/8 of the batch) differs.
  k = n // 8
  local = np.mean([ref_nt_xent(za[i:i + k], zb[i:i + k], tau, hidden_norm)[0]
                   for i in range(0, n, k)])
  assert abs(local - ref[0]) > 0.1


def test_bfloat16_inputs_finite_and_computed_in_float32():
  """bf16 projections with a large dynamic range: loss and grads finite, the loss equals the
  float32 reference on the bf16-rounded inputs (the maths runs in float32), grads come back bf16."""
  rng = np.random.default_rng(5)
  za = (rng.normal(size=(16, 32)) * 300).astype(np.float32)
  zb = (0.5 * za + 300 * rng.normal(size=(16, 32))).astype(np.float32)  # loss of order 1.
  za16, zb16 = jnp.asarray(za, jnp.bfloat16), jnp.asarray(zb, jnp.bfloat16)
  for hidden_norm in (True, False):
    tau = 0.1 if hidden_norm else 1e6  # unnormalised |z|^2 ~ 3e6: keep the logits moderate.
    (loss, _), (ga, gb) = jax.value_and_grad(
        lambda a, b: losses.nt_xent(a, b, tau, hidden_norm), argnums=(0, 1), has_aux=True)(
            za16, zb16)
    assert loss.dtype == jnp.float32
    assert ga.dtype == jnp.bfloat16 and gb.dtype == jnp.bfloat16
    assert np.isfinite(float(loss))
    assert np.all(np.isfinite(np.asarray(ga, np.float32)))
    assert np.all(np.isfinite(np.asarray(gb, np.float32)))
    ref = ref_nt_xent(np.asarray(za16, np.float32), np.asarray(zb16, np.float32), tau, hidden_norm)
    np.testing.assert_allclose(float(loss), ref[0], rtol=1e-4)


def test_zero_vector_normalisation_is_finite():
  """l2_normalize uses max(sum x^2, 1e-12): an all-zero projection gives logits 0, not NaN."""
  za = np.zeros((4, 8), np.float32)
  zb = np.random.default_rng(6).normal(size=(4, 8)).astype(np.float32)
  got = _jax_loss_and_grads(za, zb, 0.5)
  ref = ref_nt_xent(za, zb, 0.5)
  np.testing.assert_allclose(got[0], ref[0], rtol=2e-5)
  assert np.all(np.isfinite(got[3])) and np.all(np.isfinite(got[4]))


# ----------------------------------------------------------------------------- NT-Logistic and
# margin triplet (paper Table 2 / Table 4; simclr_jax/contrastive_losses.py). The reference below
# loops over anchors and negatives in float64; its gradient is its own central differences.


def _softplus(x):
  return np.logaddexp(0.0, x)


def ref_pair_loss(za, zb, kind, tau, margin=0.4, semi_hard=False, hidden_norm=True):
  """Anchor u = each of the 2N views; positive = its pair's other view; negatives = the 2N-2 other
  views. Per anchor: the Table 2 triplet objective averaged over all negatives, or over the one
  semi-hard negative (highest similarity below the positive's; if none, the lowest-similarity
  negative). loss = (sum over the 2N anchors) / N."""
  za = np.asarray(za, np.float64)
  zb = np.asarray(zb, np.float64)
  if hidden_norm:
    za, zb = _normalize(za)[0], _normalize(zb)[0]
  n = za.shape[0]
  total = 0.0
  for own, other in ((za, zb), (zb, za)):
    for i in range(n):
      s_pos = float(own[i] @ other[i])
      negs = [float(own[i] @ other[j]) for j in range(n) if j != i]
      negs += [float(own[i] @ own[j]) for j in range(n) if j != i]
      if semi_hard and negs:
        below = [s for s in negs if s < s_pos]
        negs = [max(below)] if below else [min(negs)]
      if kind == 'nt_logistic':
        term = _softplus(-s_pos / tau)  # -log sigmoid(x) = softplus(-x)
        if negs:
          term += np.mean([_softplus(s / tau) for s in negs])
      else:
        term = np.mean([max(s - s_pos + margin, 0.0) for s in negs]) if negs else 0.0
      total += term
  return total / n


def _pair_loss_and_grads(za, zb, kind, tau, margin, semi_hard, hidden_norm, mesh=None):
  def f(a, b):
    return contrastive_losses.pair_loss(a, b, kind, tau, margin, semi_hard, hidden_norm, mesh=mesh)
  (loss, m), (ga, gb) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(za, zb)
  return (float(loss), float(m['contrast_acc']), float(m['contrast_entropy']), np.asarray(ga),
          np.asarray(gb))


VARIANTS = [(k, s) for k in ('nt_logistic', 'margin_triplet') for s in (False, True)]


@pytest.mark.parametrize('hidden_norm', [True, False])
def test_pair_losses_match_loop_reference(hidden_norm):
  """Both losses, with and without semi_hard (one compile for the four): value and metrics vs
  the loop reference, gradients vs its float64 central differences."""
  za, zb = _inputs(6, 5, seed=11, scale=1.0 if hidden_norm else 0.5)
  tau, margin = 0.5, 0.4

  def all_variants(a, b):
    return [jax.value_and_grad(lambda x, y, k=k, s=s: contrastive_losses.pair_loss(
        x, y, k, tau, margin, s, hidden_norm), argnums=(0, 1), has_aux=True)(a, b)
            for k, s in VARIANTS]

  results = jax.jit(all_variants)(za, zb)
  _, acc, ent, _, _ = ref_nt_xent(za, zb, tau, hidden_norm)
  z64a, z64b = za.astype(np.float64), zb.astype(np.float64)
  for (kind, semi_hard), ((loss, m), (ga, gb)) in zip(VARIANTS, results):
    args = (kind, tau, margin, semi_hard, hidden_norm)
    ref = ref_pair_loss(za, zb, *args)
    np.testing.assert_allclose(float(loss), ref, rtol=2e-5, atol=1e-6, err_msg=str(args))
    # Metrics: NT-Xent's definitions, whatever the loss.
    assert float(m['contrast_acc']) == pytest.approx(acc, abs=1e-7)
    np.testing.assert_allclose(float(m['contrast_entropy']), ent, rtol=2e-5)
    fd_a = _fd_grad(lambda x, args=args: ref_pair_loss(x, z64b, *args), z64a)
    fd_b = _fd_grad(lambda x, args=args: ref_pair_loss(z64a, x, *args), z64b)
    assert np.abs(fd_a).max() > 1e-3  # Not a vacuous comparison.
    np.testing.assert_allclose(ga, fd_a, rtol=1e-4, atol=1e-5 * np.abs(fd_a).max(),
                               err_msg=str(args))
    np.testing.assert_allclose(gb, fd_b, rtol=1e-4, atol=1e-5 * np.abs(fd_b).max(),
                               err_msg=str(args))
    if semi_hard:  # Mining changes the value (else the mask would be a no-op).
      assert abs(ref - ref_pair_loss(za, zb, kind, tau, margin, False, hidden_norm)) > 1e-3


def test_pair_losses_hand_computed_two_pairs():
  """The NT-Xent hand case's inputs: u = [[1, 0], [0, 1]], v = [[0.6, 0.8], [0.8, -0.6]].
  Similarities (positive; negatives):  a0: 0.6; v1 0.8, u1 0     a1: -0.6; v0 0.8, u0 0
                                       b0: 0.6; u1 0.8, v1 0     b1: -0.6; u0 0.8, v0 0
  margin_triplet, m = 0.4: a0 = mean(max(0.8-0.6+0.4, 0), max(0-0.6+0.4, 0)) = mean(0.6, 0) = 0.3;
      a1 = mean(1.8, 1.0) = 1.4; b0 = 0.3, b1 = 1.4; loss = 3.4 / 2 = 1.7.
    semi-hard: a0 picks 0 (the only negative below 0.6) -> 0; a1 has none below -0.6, falls
      back to the lowest, 0 -> max(0+0.6+0.4, 0) = 1.0; loss = (0 + 1 + 0 + 1) / 2 = 1.0.
  nt_logistic, tau = 0.5 (sp = softplus = -log sigmoid(-x)): a0 = sp(-1.2) + mean(sp(1.6), sp(0))
      = 0.263282 + (1.783901 + 0.693147) / 2 = 1.501806; a1 = sp(1.2) + 1.238524 = 2.701806;
      loss = 2 (1.501806 + 2.701806) / 2 = 4.203613.
    semi-hard: a0 -> sp(-1.2) + sp(0) = 0.956430, a1 -> sp(1.2) + sp(0) = 2.156430;
      loss = 3.112859.
  Metrics are NT-Xent's: contrast_acc 0, contrast_entropy 0.446540 (see the NT-Xent hand case).
  """
  za = jnp.array([[2.0, 0.0], [0.0, 0.5]])
  zb = jnp.array([[3.0, 4.0], [8.0, -6.0]])
  want = {('nt_logistic', False): 4.203613, ('nt_logistic', True): 3.112859,
          ('margin_triplet', False): 1.7, ('margin_triplet', True): 1.0}
  got = jax.jit(lambda a, b: [contrastive_losses.pair_loss(a, b, k, 0.5, 0.4, s, True)
                              for k, s in VARIANTS])(za, zb)
  for (kind, semi_hard), (loss, m) in zip(VARIANTS, got):
    assert float(loss) == pytest.approx(want[kind, semi_hard], abs=2e-6), (kind, semi_hard)
    assert float(m['contrast_acc']) == 0.0
    assert float(m['contrast_entropy']) == pytest.approx(0.446540, abs=2e-6)


def test_pair_losses_sharded_equals_unsharded():
  """8 devices (own rows, all-gathered negatives, grads back through the gather) == 1 device ==
  the loop reference on the global batch; a device-local batch would give another value. Two
  variants cover both losses, semi_hard on/off and hidden_norm on/off (one compile per layout)."""
  mesh = sharding.make_mesh()
  assert mesh.size == 8
  n, tau, margin = 16, 0.2, 0.4
  variants = [('nt_logistic', False, False), ('margin_triplet', True, True)]
  za, zb = _inputs(n, 12, seed=21, scale=0.6)

  def run(a, b, mesh):
    def one(x, y, kind, semi_hard, hidden_norm):
      return contrastive_losses.pair_loss(x, y, kind, tau, margin, semi_hard, hidden_norm,
                                          mesh=mesh)
    return [jax.value_and_grad(one, argnums=(0, 1), has_aux=True)(a, b, *v) for v in variants]

  sa = jax.device_put(za, sharding.batch_sharded(mesh))
  sb = jax.device_put(zb, sharding.batch_sharded(mesh))
  sharded = jax.jit(functools.partial(run, mesh=mesh))(sa, sb)
  whole = jax.jit(functools.partial(run, mesh=None))(za, zb)
  for v, ((ls, ms), gs), ((lw, mw), gw) in zip(variants, sharded, whole):
    args = (v[0], tau, margin, v[1], v[2])
    ref = ref_pair_loss(za, zb, *args)
    np.testing.assert_allclose(float(ls), ref, rtol=2e-5, err_msg=str(v))
    np.testing.assert_allclose(float(ls), float(lw), rtol=1e-6, err_msg=str(v))
    assert float(ms['contrast_acc']) == float(mw['contrast_acc'])
    np.testing.assert_allclose(float(ms['contrast_entropy']), float(mw['contrast_entropy']),
                               rtol=1e-6)
    for s, w in zip(gs, gw):
      w = np.asarray(w)
      assert np.abs(w).max() > 0
      np.testing.assert_allclose(np.asarray(s), w, rtol=1e-5, atol=1e-6 * np.abs(w).max(),
                                 err_msg=str(v))
    local = np.mean([ref_pair_loss(za[i:i + 2], zb[i:i + 2], *args) for i in range(0, n, 2)])
    assert abs(local - ref) > 1e-2, v


def test_dispatcher_nt_xent_is_losses_nt_xent():
  """loss.type='nt_xent' traces to exactly the program losses.nt_xent gives (value and grads),
  so the default path is bitwise unchanged; other types go to pair_loss."""
  za, zb = _inputs(8, 6, seed=31)
  cfg = ml_collections.ConfigDict({'type': 'nt_xent', 'temperature': 0.3, 'hidden_norm': True,
                                   'margin': 0.4, 'semi_hard': False})
  f = jax.value_and_grad(lambda a, b: contrastive_losses.contrastive(a, b, cfg)[0], (0, 1))
  g = jax.value_and_grad(lambda a, b: losses.nt_xent(a, b, 0.3, True)[0], (0, 1))
  assert str(jax.make_jaxpr(f)(za, zb)) == str(jax.make_jaxpr(g)(za, zb))
  cfg.type = 'margin_triplet'
  h = lambda a, b: contrastive_losses.pair_loss(a, b, 'margin_triplet', 0.3, 0.4, False, True)[0]
  assert (str(jax.make_jaxpr(lambda a, b: contrastive_losses.contrastive(a, b, cfg)[0])(za, zb))
          == str(jax.make_jaxpr(h)(za, zb)))


@pytest.mark.parametrize('key,value,fragment', [
    ('type', 'triplet', "('nt_xent', 'nt_logistic', 'margin_triplet')"),
    ('margin', -0.1, '>= 0'),
    ('semi_hard', None, 'True or False'),
    ('semi_hard', True, 'nt_logistic/margin_triplet only'),
])
def test_loss_config_errors(key, value, fragment):
  from configs import default  # pylint: disable=g-import-not-at-top
  from simclr_jax import validation  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  with config.unlocked():
    config.loss[key] = value
  with pytest.raises(validation.ConfigError) as e:
    validation.validate(config, num_devices=8)
  assert f'config.loss.{key}={value!r}' in str(e.value) and fragment in str(e.value)
  for kind in ('nt_logistic', 'margin_triplet'):  # semi_hard is fine with these.
    ok = default.get_config()
    ok.loss.type, ok.loss.semi_hard = kind, True
    validation.validate(ok, num_devices=8)


def test_train_step_runs_with_margin_triplet():
  """steps.loss_and_grads dispatches on config.loss.type; same metric keys for every type."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from configs import test as test_config  # pylint: disable=g-import-not-at-top
  from simclr_jax import steps  # pylint: disable=g-import-not-at-top

  class Toy(nn.Module):
    @nn.compact
    def __call__(self, images, train=False):
      h = nn.Dense(8)(images.reshape((images.shape[0], -1)))
      return {'features': h, 'projection': nn.Dense(4)(h)}

  views = np.random.default_rng(0).integers(0, 256, (8, 2, 4, 4, 3), dtype=np.uint8)
  model = Toy()
  params = jax.jit(model.init)(jax.random.key(0), np.zeros((2, 4, 4, 3), np.float32))['params']
  state = steps.TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.1),
                                  batch_stats={})
  config = test_config.get_config()
  config.aug.on_device = False
  config.loss.type, config.loss.semi_hard = 'margin_triplet', True
  grads, metrics, _ = jax.jit(functools.partial(steps.loss_and_grads, config=config))(
      state.params, state, {'views': views, 'label': np.zeros(8, np.int32)})
  assert np.isfinite(float(metrics['contrast_loss'])) and float(metrics['contrast_loss']) > 0
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))
  # The keys an nt_xent step reports (progress lines and results keep their shape).
  assert set(metrics) == {'contrast_acc', 'contrast_entropy', 'contrast_loss', 'weight_decay',
                          'total_loss'}
