"""load_encoder(path, step=None): a pretraining run's encoder, ready to embed images. No TensorFlow.

    from simclr_jax import load
    enc = load.load_encoder('/tmp/simclr_demo')                  # a workdir: its latest checkpoint
    enc = load.load_encoder('gs://bucket/run/checkpoints/3000')  # or one checkpoint directory
    h = enc.embed(images)    # uint8 or float [B, H, W, 3], any H and W -> float32 [B, D]
    z = enc.project(images)  # -> float32 [B, proj_out_dim]

The architecture comes from the workdir's config.json; params and BN statistics (moving averages;
the optimiser state is not read) from its checkpoint. Images get the run's eval preprocessing, as
the eval pipeline (data/input_pipeline.eval_image) applies it: centre crop 0.875 (only when
data.image_size > 32, as official), bicubic resize to data.image_size, clip to [0, 1], rounding to
uint8 levels. Here it is JAX (data/eval_preprocess.py), not tf.image: tests/test_load.py bounds
the difference (at most 1/255 per pixel, on real digits and photos).

This module and everything it imports stay free of TensorFlow (data/eval_preprocess.py is plain
JAX), so a notebook can run where TF is not installed. A gs:// path then
needs `gcsfs` (etils reads it through fsspec when TF is absent).
"""

import dataclasses
import functools
from typing import Any, Optional

from etils import epath
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from simclr_jax import models
from simclr_jax.checkpoints import checkpointing
from simclr_jax.data import eval_preprocess
from simclr_jax import sharding
from simclr_jax.cpu import ops as cpu_ops

ORBAX_ITEM = checkpointing.ITEM  # CheckpointManager's directory for its single item.


class CheckpointNotFoundError(FileNotFoundError):
  """The path is not a simclr_jax workdir or checkpoint, or has no (such) checkpoint."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """Where a checkpoint is: its run's workdir, its step and the run's config."""
  workdir: str
  step: int
  config: ml_collections.ConfigDict

  @property
  def path(self) -> epath.Path:
    """The Orbax item directory: workdir/checkpoints/<step>/default."""
    return epath.Path(self.workdir) / checkpointing.CHECKPOINT_DIR / str(self.step) / ORBAX_ITEM


def split_path(path: str) -> tuple[str, Optional[int]]:
  """(workdir, step) of `path`: `.../checkpoints/<step>` or `.../checkpoints/<step>/default` name
  a step; anything else is taken as a workdir (step None). String arithmetic only (no I/O)."""
  p = epath.Path(path)
  if p.name == ORBAX_ITEM and p.parent.name.isdigit():
    p = p.parent
  if p.name.isdigit() and p.parent.name == checkpointing.CHECKPOINT_DIR:
    return str(p.parent.parent), int(p.name)
  return str(p), None


def latest_step(workdir: str) -> Optional[int]:
  """The step load_encoder picks when none is given (the newest checkpoint), or None.

  The one place that chooses it, so that a "newest readable checkpoint" rule can replace it.
  """
  if not (epath.Path(workdir) / checkpointing.CHECKPOINT_DIR).exists():
    return None
  mngr = checkpointing.manager(workdir, create=False, alone=True)
  try:
    return mngr.latest_step()
  finally:
    mngr.close()


def locate(path: str, step: Optional[int] = None) -> Checkpoint:
  """The pretraining checkpoint `path` names (a workdir: `step`, or its newest checkpoint; or one
  checkpoint directory). Reads config.json and lists checkpoints; restores nothing.

  Raises CheckpointNotFoundError, saying what was expected, if there is no such checkpoint, and
  ValueError if the run is not a pretraining run.
  """
  workdir, path_step = split_path(path)
  if path_step is not None and step is not None and step != path_step:
    raise ValueError(f'{path!r} is the checkpoint of step {path_step}, but step={step} was asked.')
  step = path_step if step is None else step
  if not (epath.Path(workdir) / checkpointing.CONFIG_FILE).exists():
    raise CheckpointNotFoundError(
        f'{workdir!r} has no {checkpointing.CONFIG_FILE}: pass the --workdir of a simclr_jax '
        f'pretraining run, or one of its {checkpointing.CHECKPOINT_DIR}/<step> directories.')
  config = checkpointing.read_config(workdir)
  mode = config.get('mode', 'pretrain')
  if mode != 'pretrain':
    raise ValueError(f'{workdir!r} is a {mode!r} run; pass a pretraining workdir.')
  if step is None:
    step = latest_step(workdir)
    if step is None:
      raise CheckpointNotFoundError(
          f'{workdir!r} has no checkpoint in {epath.Path(workdir) / checkpointing.CHECKPOINT_DIR}'
          ': pretrain first (or wait for its first save).')
  found = Checkpoint(workdir, int(step), config)
  if not found.path.exists():
    raise CheckpointNotFoundError(
        f'{workdir!r} has no checkpoint of step {step} ({found.path} does not exist); it has '
        f'steps {available_steps(workdir)}.')
  return found


def available_steps(workdir: str) -> list[int]:
  """The workdir's checkpoint steps, oldest first (Orbax's listing), for error messages."""
  if not (epath.Path(workdir) / checkpointing.CHECKPOINT_DIR).exists():
    return []
  mngr = checkpointing.manager(workdir, create=False, alone=True)
  try:
    return sorted(int(s) for s in mngr.all_steps())
  finally:
    mngr.close()


def restore_variables(workdir: str, step: int, target: jax.sharding.Sharding
                      ) -> dict[str, Any]:
  """{'params', 'batch_stats'} of workdir's checkpoint `step`, every array placed with `target`
  (e.g. replicated on a mesh); the optimiser state is not read. Works for any simclr_jax job's
  checkpoint (pretraining, linear evaluation, fine-tuning). With several processes every one
  reads, and a failure on any stops all of them with the same error."""
  from simclr_jax import cluster  # pylint: disable=g-import-not-at-top
  path = epath.Path(workdir) / checkpointing.CHECKPOINT_DIR / str(step) / ORBAX_ITEM

  def restore():
    # The handler's metadata, not the Checkpointer's: the latter looks for the step-level
    # metadata file in the item directory and logs a warning that it is missing.
    meta = ocp.PyTreeCheckpointHandler().metadata(path)
    abstract = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=target),
                                meta[k]) for k in ('params', 'batch_stats') if k in meta}
    out = checkpointing.read(path.parent.parent, step, abstract, partial=True)
    out.setdefault('batch_stats', {})
    return out

  return cluster.every_process_does(restore, f'restoring {path}')


def _forward(variables, images, *, apply_fn, size: int, crop: bool, output: str):
  return apply_fn(variables, eval_preprocess.preprocess(images, size, crop), train=False)[output]


def _as_batch(images) -> tuple[np.ndarray, bool]:
  """(images as [B, H, W, 3] uint8 or float32, whether one [H, W, 3] image was given)."""
  x = np.asarray(images)
  single = x.ndim == 3
  if single:
    x = x[None]
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f'images must be [B, H, W, 3] or [H, W, 3] (RGB; repeat gray images 3 times '
                     f'on the last axis); got shape {np.shape(images)}.')
  if x.dtype != np.uint8:
    if not np.issubdtype(x.dtype, np.floating):
      raise ValueError(f'images must be uint8 [0, 255] or float [0, 1]; got dtype {x.dtype}.')
    x = x.astype(np.float32, copy=False)
  return x, single


def _check_float_range(x: np.ndarray) -> None:
  if x.dtype != np.uint8 and x.size and (x.min() < -0.5 or x.max() > 1.5):
    raise ValueError(f'float images must be in [0, 1]; got values in [{x.min():g}, {x.max():g}] '
                     '(pass uint8 for [0, 255] pixels).')


def _bucket(n: int, batch_size: int, num_devices: int) -> int:
  """Padded batch for n images: a power of two (so that a few shapes are ever compiled), a
  multiple of the device count, at most batch_size rounded up to that multiple."""
  up = lambda k: -(-k // num_devices) * num_devices
  return min(up(1 << max(n - 1, 0).bit_length()), up(batch_size))


class Encoder:
  """A restored pretraining run: `.config`, `.step`, `.variables` ({'params', 'batch_stats'}),
  `.model` (the SimCLR module), `.image_size`, `.embed(images)` and `.project(images)`."""

  def __init__(self, checkpoint: Checkpoint, variables: dict[str, Any],
               mesh: jax.sharding.Mesh):
    self.checkpoint = checkpoint
    self.config = checkpoint.config
    self.step = checkpoint.step
    self.variables = variables
    self.mesh = mesh
    self.image_size = int(self.config.data.image_size)
    # The jobs' convolution choice (cpu.ops), 'auto' for runs that predate it (converted official
    # ones): the same function, and on XLA:CPU its kernels embed about 8x faster.
    self.model = models.build_model(self.config, num_classes(variables['params']),
                                    ops=cpu_ops.model_ops(self.config, absent='auto'))
    self._fns = {}

  def __repr__(self):
    m = self.config.model
    return (f'Encoder(ResNet-{m.resnet_depth} x{m.width_multiplier}, {self.image_size} px, step '
            f'{self.step} of {self.checkpoint.workdir!r})')

  def embed(self, images, batch_size: int = 256) -> np.ndarray:
    """Encoder features h (the pooled ResNet output): images uint8 [B, H, W, 3] (or float in
    [0, 1]; any H, W) -> float32 [B, D]; one [H, W, 3] image -> [D]. Eval preprocessing applied;
    runs `batch_size` images at a time, so only that many are ever on the device."""
    return self.outputs(images, 'features', batch_size)

  def project(self, images, batch_size: int = 256) -> np.ndarray:
    """Projection-head output z (what NT-Xent compares): float32 [B, proj_out_dim] (or [dim])."""
    return self.outputs(images, 'projection', batch_size)

  def outputs(self, images, output: str, batch_size: int = 256) -> np.ndarray:
    """The model's `output` ('features', 'projection', or 'sup_logits' when the run trained the
    online probe) for `images`, as embed() describes."""
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1; got {batch_size}.')
    x, single = _as_batch(images)
    fn = self._fn(output)
    data = sharding.batch_sharded(self.mesh)
    chunks = []
    for i in range(0, max(len(x), 1), batch_size):
      chunk = x[i:i + batch_size]
      _check_float_range(chunk)
      n = len(chunk)
      pad = _bucket(max(n, 1), batch_size, self.mesh.size) - n
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      chunks.append(np.asarray(fn(self.variables, jax.device_put(chunk, data)), np.float32)[:n])
    out = np.concatenate(chunks)
    return out[0] if single else out

  def _fn(self, output: str):
    if output not in self._fns:
      self._fns[output] = jax.jit(functools.partial(
          _forward, apply_fn=self.model.apply, size=self.image_size,
          crop=self.image_size > 32, output=output))
    return self._fns[output]


def num_classes(params: dict[str, Any]) -> int:
  """Classes of the online probe read off its kernel's shape (0 if the run had none)."""
  head = params.get('head_supervised')
  return int(head['dense']['kernel'].shape[-1]) if head else 0


def load_encoder(path: str, step: Optional[int] = None, *,
                 mesh: Optional[jax.sharding.Mesh] = None) -> Encoder:
  """A pretraining checkpoint as an Encoder.

  path: a workdir (its newest checkpoint, or `step`) or one checkpoint directory
    (`workdir/checkpoints/<step>`, also `.../<step>/default`); local or gs://.
  mesh: the devices to hold the (replicated) variables and split each batch over; default: all
    of this process's devices.
  """
  found = locate(path, step)
  mesh = sharding.make_mesh(jax.local_devices()) if mesh is None else mesh
  variables = restore_variables(found.workdir, found.step, sharding.replicated(mesh))
  return Encoder(found, variables, mesh)
