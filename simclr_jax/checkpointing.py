"""Orbax checkpoints in `workdir/checkpoints/<step>/` plus `workdir/config.json`.

A checkpoint holds the whole TrainState (step, params, batch_stats, opt_state), which is all a
resume needs: the data stream and augmentations are functions of (seed, step), and there is no
other RNG state. Saves are atomic (Orbax writes to a temporary directory and renames), so a
preempted save never corrupts the last good checkpoint.
"""

import json
import os
from typing import Any, Optional

from etils import epath
import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'


def manager(workdir: str, keep: int = 2, create: bool = True) -> ocp.CheckpointManager:
  if jax.default_backend() == 'cpu':
    # Emulated CPU devices share one host, so replica-parallel saving buys nothing and costs one
    # eager slice compile per array and device (10-20 s on the first save of the test model).
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
  return ocp.CheckpointManager(
      epath.Path(workdir) / CHECKPOINT_DIR,
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create))


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
  mngr.save(step, args=ocp.args.StandardSave(state))


def restore(mngr: ocp.CheckpointManager, target: Any, step: Optional[int] = None) -> Any:
  """Restore into the structure, dtypes and shardings of `target` (a state or its abstract twin)."""
  step = mngr.latest_step() if step is None else step
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract))


def restore_latest(mngr: ocp.CheckpointManager, state: Any) -> tuple[Any, int]:
  """(state restored from the latest checkpoint, its step), or (state, 0) if there is none."""
  if mngr.latest_step() is None:
    return state, 0
  state = restore(mngr, state)
  return state, int(jax.device_get(state.step))


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir) / CONFIG_FILE
  path.write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (as saved by `write_config`)."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f'{path} not found: is {workdir!r} a simclr_jax workdir?')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def check_workdir_writable(workdir: str) -> None:
  """Fail before any compilation if the workdir cannot be created or written."""
  if workdir.startswith('gs://'):
    return  # Checked by the first write; gcsfs permissions are not knowable without writing.
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_probe_{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f'--workdir={workdir!r} is not writable ({e.strerror}); pass a '
                          'directory you can create and write.') from e
