"""Frozen-feature evaluation that leaves features on the devices that computed them.

`extract_sharded` runs a jitted embedding over every example of a split (the last batch padded
and masked) and writes each device's rows of every batch into that device's slice of one global
array: the result is [R, ...] sharded over 'data' (R = batches x eval batch, rows in device-major
order, not stored order), with 'label', 'mask' and 'index' (stored-order position) arrays beside
it. Nothing is gathered: on a TPU v3-128 ImageNet's 1.28M x 2048 train features are 82 MB per
core, not 10.5 GB per host. Consumers work on shards and reduce with collectives: the linear
probe here (minibatch Adam over sharded features), the kNN in knn.py, accuracy counts, and
`gather_rows` for the few points a host writes (the embedding plot).

`extract` keeps the host contract (every example once, stored order, numpy on every process) for
small jobs (linear_eval's precomputed features) and tests. The probe itself is
evaluators/linear_probe.py.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np

from simclr_jax import sharding
from simclr_jax import steps
from simclr_jax.data import input_pipeline
from simclr_jax.data import sources

AXIS = sharding.DATA_AXIS
ROWS = P(AXIS)  # Leading (row) axis split over the devices.
COUNT_CHUNK = 1024  # Rows per device scored at once when counting accuracies.


@dataclasses.dataclass(frozen=True)
class Sharded:
  """A split's outputs left on the devices: every array is [R, ...] with rows sharded over
  'data'. Row r of every field is the same example; padding rows have mask 0 and index -1.

  outputs: an array [R, ...] or a dict of them (e.g. {'features', 'sup_logits'}).
  label: int32 [R]; mask: float32 [R] (1 = real example); index: int32 [R], the example's
  position in the split's stored order; num_examples: rows with mask 1; split: its name.
  """
  outputs: Any
  label: jax.Array
  mask: jax.Array
  index: jax.Array
  num_examples: int
  split: str = ''

  def select(self, name: str) -> 'Sharded':
    """The same rows with outputs = outputs[name]."""
    return dataclasses.replace(self, outputs=self.outputs[name])


@functools.partial(jax.jit, static_argnames=('shapes', 'mesh'))
def _zeros(shapes, mesh):
  """Zero arrays of `shapes` (a tuple of (shape, dtype name)), rows sharded, made on device."""
  out = tuple(jnp.zeros(shape, dtype) for shape, dtype in shapes)
  return jax.lax.with_sharding_constraint(out, jax.sharding.NamedSharding(mesh, ROWS))


@functools.partial(jax.jit, static_argnames=('mesh',), donate_argnums=(0,))
def write_rows(buf, batch, j, *, mesh):
  """buf rows [j*b, (j+1)*b) of every device's slice <- that device's b rows of `batch`: a local
  copy (no communication), in place (buf is donated)."""
  def local(buf, batch, j):
    return jax.tree.map(
        lambda t, x: jax.lax.dynamic_update_slice_in_dim(t, x.astype(t.dtype), j * x.shape[0], 0),
        buf, batch)
  return jax.shard_map(local, mesh=mesh, in_specs=(ROWS, ROWS, P()), out_specs=ROWS)(buf, batch, j)


def extract_sharded(config: ml_collections.ConfigDict, split: str, num_examples: int,
                    mesh: jax.sharding.Mesh, embed_fn: Callable[[jax.Array], Any],
                    indices: Optional[np.ndarray] = None) -> Sharded:
  """Runs `embed_fn` (jitted, images [B,H,W,3] -> [B, ...] or a dict of them, batch-sharded)
  over `split` (or over its stored positions `indices`, sorted; then num_examples is ignored) and
  returns the outputs as global arrays sharded over 'data', never gathered. Every process must
  call it at the same point with the same arguments."""
  if indices is not None:
    num_examples = len(indices)
  pc = jax.process_count()
  nb = input_pipeline.num_eval_batches(num_examples, config.eval.batch_size, pc)
  if nb == 0:
    raise ValueError(f'split {split!r}: nothing to evaluate (0 examples selected).')
  buf = None
  for j, batch in enumerate(input_pipeline.eval_batches(
      config, split, global_batch=config.eval.batch_size, process_index=jax.process_index(),
      process_count=pc, num_examples=num_examples, indices=indices)):
    new = (embed_fn(sharding.global_batch(batch['image'], mesh)),
           sharding.global_batch({k: batch[k] for k in ('label', 'mask', 'index')}, mesh))
    if buf is None:
      leaves, tree = jax.tree.flatten(new)
      buf = jax.tree.unflatten(tree, _zeros(tuple(
          ((nb * x.shape[0],) + x.shape[1:], x.dtype.name) for x in leaves), mesh))
    buf = write_rows(buf, new, jnp.int32(j), mesh=mesh)
  out, meta = buf
  return Sharded(out, meta['label'], meta['mask'], meta['index'], int(num_examples), split)


def to_host(split: Sharded) -> tuple[Any, np.ndarray]:
  """(outputs, labels) as numpy on every process: every example once, in stored order. Gathers
  everything: for small sets and tests only."""
  out, meta = jax.tree.map(
      lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)),
      (split.outputs, {'label': split.label, 'mask': split.mask, 'index': split.index}))
  keep = meta['mask'] > 0
  perm = np.argsort(meta['index'][keep], kind='stable')
  return jax.tree.map(lambda x: x[keep][perm], out), meta['label'][keep][perm]


def extract(config: ml_collections.ConfigDict, split: str, num_examples: int,
            mesh: jax.sharding.Mesh, embed_fn: Callable[[jax.Array], Any]
            ) -> tuple[Any, np.ndarray]:
  """Runs `embed_fn` (jitted, images -> [B, D], or a dict of [B, ...] arrays) over `split`;
  returns (outputs of the same structure with every example once, labels) on host, in the
  split's stored order whatever the number of processes. Gathers the whole split to every host:
  use extract_sharded for anything large."""
  return to_host(extract_sharded(config, split, num_examples, mesh, embed_fn))


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
           mesh: jax.sharding.Mesh) -> Sharded:
  """Raw eval-preprocessed pixels, flattened [R, S*S*3]: the baseline any representation should
  beat."""
  fn = jax.jit(lambda x: jnp.reshape(steps.to_float_images(x), (x.shape[0], -1)),
               out_shardings=sharding.batch_sharded(mesh))
  return extract_sharded(config, split, num_examples, mesh, fn)


def split_labels(config: ml_collections.ConfigDict, split: str, num_examples: int) -> np.ndarray:
  """Labels int32 [n] of the whole split in stored order, identical on every process: each
  process reads only its share's labels (sources.split_labels), then they are gathered
  (4 bytes per example: 5 MB for ImageNet's train split)."""
  pi, pc = jax.process_index(), jax.process_count()
  local = sources.split_labels(config, split, process_index=pi, process_count=pc)
  if pc == 1:
    return local
  share = -(-num_examples // pc)
  padded = np.zeros((share,), np.int32)
  padded[:len(local)] = local
  every = np.asarray(multihost_utils.process_allgather(padded))  # [pc, share]
  shares = []
  for p in range(pc):
    lo, hi = sources.shard_bounds(num_examples, p, pc)
    shares.append(every[p][:hi - lo])
  return np.concatenate(shares)


@jax.jit
def _restrict(mask, index, keep):
  pos = jnp.clip(jnp.searchsorted(keep, index), 0, keep.shape[0] - 1)
  return mask * (keep[pos] == index)


def restrict(split: Sharded, indices: np.ndarray) -> Sharded:
  """The rows of `split` whose stored position is in `indices` (sorted): the others masked out,
  nothing moved (e.g. a kNN bank subset of the whole split's features)."""
  mask = _restrict(split.mask, split.index, jnp.asarray(np.asarray(indices, np.int32)))
  return dataclasses.replace(split, mask=mask, num_examples=len(indices))


# ---- small reductions over sharded rows: only scalars leave the devices ----


@jax.jit
def _label_range(label, mask):
  big = jnp.iinfo(jnp.int32).max
  return (jnp.min(jnp.where(mask > 0, label, big)), jnp.max(jnp.where(mask > 0, label, -big)))


def check_labels(split: Sharded, num_classes: int, where: str) -> None:
  """Raises sources.UnlabelledError if a real row's label is outside [0, num_classes);
  decided from two replicated scalars, so every process raises alike."""
  lo, hi = (int(v) for v in _label_range(split.label, split.mask))
  sources.check_labels(np.array([lo, hi]), num_classes,
                              f'{where} (split {split.split!r})' if split.split else where)


@jax.jit
def _count(mask):
  return jnp.sum(mask)


def count(split: Sharded) -> int:
  """Real (unpadded) rows, counted on the devices."""
  return int(round(float(_count(split.mask))))


def hits(scores, label, mask, ks):
  """[len(ks)] top-k hit counts of row scores [r, C] over the rows with mask."""
  top = jax.lax.top_k(scores, max(ks))[1]  # Ties: the lower class first (as a stable argsort).
  hit = top == label[:, None]
  return jnp.stack([jnp.sum(jnp.any(hit[:, :k], axis=1) * mask) for k in ks])


def chunked(rows: int, fn, init):
  """fori_loop over this device's rows COUNT_CHUNK at a time: fn(start, fresh, acc) -> acc,
  where the last chunk overlaps the one before and `fresh` [c] marks its rows not seen yet."""
  c = min(COUNT_CHUNK, rows)

  def body(i, acc):
    start = jnp.minimum(i * c, rows - c)
    return fn(start, c, (start + jnp.arange(c)) >= i * c, acc)

  return jax.lax.fori_loop(0, -(-rows // c), body, jax.lax.pcast(init, AXIS, to='varying'))


@functools.partial(jax.jit, static_argnames=('ks', 'mesh'))
def topk_correct(scores, label, mask, *, ks, mesh):
  """Top-k hit counts of row scores [R, C] sharded over rows: each device ranks its own rows,
  a chunk at a time, and the counts are summed."""
  def local(scores, label, mask):
    def fn(start, c, fresh, acc):
      part = lambda v: jax.lax.dynamic_slice_in_dim(v, start, c)
      return acc + hits(part(scores), part(label), part(mask) * fresh, ks)
    return jax.lax.psum(chunked(scores.shape[0], fn, jnp.zeros((len(ks),), jnp.float32)), AXIS)
  return jax.shard_map(local, mesh=mesh, in_specs=(ROWS,) * 3, out_specs=P())(
      scores, label, mask)


def topk_accuracies(scores: jax.Array, split: Sharded, ks: tuple[int, ...] = (1, 5)
                    ) -> tuple[float, ...]:
  """Top-k accuracies of row scores [R, C] (sharded like `split`) over split's real rows."""
  ks = tuple(min(k, scores.shape[1]) for k in ks)
  hits = np.asarray(topk_correct(scores, split.label, split.mask, ks=ks,
                                  mesh=scores.sharding.mesh))
  return tuple(float(h) / split.num_examples for h in hits)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Host version: top-k accuracy of [N, C] logits."""
  k = min(k, logits.shape[1])
  top = np.argsort(-logits, axis=1)[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=1)))


@functools.partial(jax.jit, static_argnames=('mesh',))
def _gather_rows(x, label, index, wanted, *, mesh):
  """Rows whose stored index is in `wanted` (sorted, replicated [m]), replicated [m, ...]: each
  device contributes the rows it holds and zeros elsewhere, and a psum adds them up."""
  def local(x, label, index, wanted):
    order = jnp.argsort(index)
    pos = jnp.clip(jnp.searchsorted(index[order], wanted), 0, index.shape[0] - 1)
    row = order[pos]
    hit = index[row] == wanted
    pick = lambda v: jnp.where(hit.reshape((-1,) + (1,) * (v.ndim - 1)), v[row], 0)
    return jax.lax.psum((pick(x), pick(label)), AXIS)
  return jax.shard_map(local, mesh=mesh, in_specs=(ROWS, ROWS, ROWS, P()), out_specs=P())(
      x, label, index, wanted)


def gather_rows(split: Sharded, wanted: np.ndarray, mesh: jax.sharding.Mesh
                ) -> tuple[np.ndarray, np.ndarray]:
  """(outputs [m, ...], labels [m]) of the examples at stored positions `wanted` (sorted, all
  present), as numpy on every process: what a host writes, e.g. the embedding plot's points.
  Moves m rows, not the split."""
  wanted = np.asarray(wanted, np.int32)
  x, y = _gather_rows(split.outputs, split.label, split.index, jnp.asarray(wanted), mesh=mesh)
  return np.asarray(x), np.asarray(y)
