"""The pretraining run a linear-evaluation or fine-tuning job starts from: which checkpoint
(process 0 decides), the architecture it fixes, its variables."""

from typing import Any

import ml_collections

from simclr_jax import cluster
from simclr_jax import progress
from simclr_jax import sharding
from simclr_jax import validation
from simclr_jax.checkpoints import encoder as encoders

# Fields taken from the pretraining run: they define the architecture of the checkpoint.
ARCHITECTURE_FIELDS = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'proj_head_mode',
                       'proj_out_dim', 'num_proj_layers', 'batch_norm_decay', 'dtype')


def pretraining_run(config: ml_collections.ConfigDict) -> encoders.Checkpoint:
  """The checkpoint config.init_checkpoint names (a pretraining workdir: its newest checkpoint;
  or one of its checkpoints/<step> directories), with the run's config; a clear ConfigError,
  before anything is compiled, if it is not a pretraining workdir with a checkpoint. Process 0
  decides (its listing, its reading) and every process gets its answer."""
  src = config.init_checkpoint
  if not src:
    raise validation.ConfigError(
        f'config.mode={config.mode!r} needs --config.init_checkpoint=PRETRAIN_WORKDIR (the '
        '--workdir of a pretraining run, holding config.json and checkpoints/).')

  def find():  # Process 0 lists and decides: every host restores the same step.
    try:
      found = encoders.locate(src)
    except (FileNotFoundError, ValueError) as e:  # No config.json or checkpoint; not pretraining.
      raise validation.ConfigError(f'config.init_checkpoint={src!r}: {e}') from e
    return {'workdir': found.workdir, 'step': found.step, 'config': found.config.to_dict()}

  found = cluster.process_0_does(find, f'locating config.init_checkpoint={src!r}')
  return encoders.Checkpoint(found['workdir'], int(found['step']),
                         ml_collections.ConfigDict(found['config']))


def merged_config(config: ml_collections.ConfigDict,
                  pre: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with the architecture (model fields, data.image_size) of the pretraining run."""
  out = ml_collections.ConfigDict(config.to_dict())  # A copy (placeholders become values).
  for key in ARCHITECTURE_FIELDS:
    if key in pre.model:
      out.model[key] = type(config.model[key])(pre.model[key])
  if 'data' in pre and 'image_size' in pre.data:
    if pre.data.image_size != config.data.image_size:
      progress.say(f'Using the pretraining run\'s image size {pre.data.image_size} (config had '
           f'{config.data.image_size}).')
    out.data.image_size = int(pre.data.image_size)
  out.lock()
  return out


def restore_pretrained(workdir: str, step: int, mesh) -> dict[str, Any]:
  """{'params', 'batch_stats'} of a simclr_jax checkpoint, replicated on `mesh`; the optimiser
  state is not read."""
  return encoders.restore_variables(workdir, step, sharding.replicated(mesh))
