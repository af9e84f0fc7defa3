"""Orbax checkpoints in `workdir/checkpoints/<step>/` plus `workdir/config.json`.

A checkpoint holds the whole TrainState (step, params, batch_stats, opt_state), which is all a
resume needs: the data stream and augmentations are functions of (seed, step), and there is no
other RNG state. Saves are atomic (Orbax writes to a temporary directory and renames), so a
preempted save never corrupts the last good checkpoint. A checkpoint damaged later (files lost
or truncated, e.g. by an interrupted copy to gs://) is moved aside to `damaged_checkpoints/`,
never deleted, and the newest readable one is used instead.

config.json describes the checkpoints beside it: a rerun whose config changes the model, the data
or the optimiser is refused (listing every changed key) unless explicitly allowed, and the file
is never rewritten under checkpoints that depend on it.
"""

import json
import os
import time
from typing import Any, Optional

from etils import epath
import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
DAMAGED_DIR = 'damaged_checkpoints'
# Config groups/keys a resume may change freely: they do not touch what the checkpoints hold or
# how training continues (logging, cadences, evaluation, labels of the run).
HARMLESS_KEYS = ('name', 'train.log_every_seconds', 'train.checkpoint_every_steps',
                 'train.keep_checkpoints', 'train.eval_every_epochs',
                 'train.check_finite_every_steps', 'train.profile_steps', 'eval.', 'hardware.',
                 'data.data_dir', 'data.download', 'linear_eval.', 'model.conv_impl')


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
  """(state restored from the newest readable checkpoint, its step), or (state, 0) if none.

  A checkpoint that fails to restore on any process is reported with its step and the reason,
  moved to <workdir>/damaged_checkpoints/<step> (never deleted) and the next older one is tried.
  """
  from simclr_jax import cluster  # pylint: disable=g-import-not-at-top
  from simclr_jax import progress  # pylint: disable=g-import-not-at-top
  mngr.reload()  # Another process may have written since the manager was created.
  for step in sorted(mngr.all_steps(), reverse=True):
    reason = None
    try:
      restored = restore(mngr, state, step)
    except Exception as e:  # pylint: disable=broad-except  # Any unreadable file: fall back.
      reason = f'{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e) else ""}'
    if cluster.all_agree(reason is None):
      return restored, int(jax.device_get(restored.step))
    moved = _move_aside(mngr, step)
    progress.say(f'warning: checkpoint step {step} in {mngr.directory} cannot be restored '
                 f'({reason or "failed on another process"}); moved to {moved}, trying the '
                 'previous one.')
  return state, 0


def _move_aside(mngr: ocp.CheckpointManager, step: int) -> str:
  """Moves checkpoint `step` to <workdir>/damaged_checkpoints/<step>-<time> (process 0), so a
  new save of that step cannot collide with it and no cleanup policy deletes good ones for it."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  src = epath.Path(mngr.directory) / str(step)
  dst = epath.Path(mngr.directory).parent / DAMAGED_DIR / f'{step}-{int(time.time())}'
  if jax.process_index() == 0:
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.rename(dst)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'simclr_jax: damaged checkpoint {step} moved')
  mngr.reload()
  return str(dst)


def flat(config: dict, prefix: str = '') -> dict:
  """{'group.key': value} of a nested config dict."""
  out = {}
  for k, v in config.items():
    if isinstance(v, dict):
      out.update(flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


# Keys added after runs were written, with the value that reproduces those runs: absent in an old
# config.json and at this value now is no change.
ADDED_KEYS = {'aug.on_device': False, 'model.conv_impl': 'xla', 'train.profile_steps': 0}


def config_changes(old: dict, new: dict) -> tuple[list, list]:
  """(changes that matter, harmless changes) between two config dicts, each as (key, old, new)."""
  a, b = flat(old), flat(new)
  changed = [(k, a.get(k, '<absent>'), b.get(k, '<absent>')) for k in sorted(set(a) | set(b))
             if a.get(k, '<absent>') != b.get(k, '<absent>')]
  changed = [c for c in changed
             if not (c[1] == '<absent>' and c[0] in ADDED_KEYS and c[2] == ADDED_KEYS[c[0]])]
  harmless = [c for c in changed if any(c[0] == h or (h.endswith('.') and c[0].startswith(h))
                                        for h in HARMLESS_KEYS)]
  return [c for c in changed if c not in harmless], harmless


def check_resume_config(workdir: str, config: ml_collections.ConfigDict,
                        allow_change: bool = False) -> None:
  """Before anything compiles: if `workdir` already holds checkpoints, the config must match its
  config.json except for harmless keys (logging, cadences, evaluation). Raises ConfigError-like
  ValueError listing each changed key with its old and new value, unless `allow_change`."""
  from simclr_jax import progress  # pylint: disable=g-import-not-at-top
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists() or not has_checkpoints(workdir):
    return
  old = json.loads(path.read_text())
  new = json.loads(config.to_json_best_effort())
  bad, harmless = config_changes(old, new)
  fmt = lambda cs: '; '.join(f'{k}: {o!r} -> {n!r}' for k, o, n in cs)
  if harmless:
    progress.say(f'Resuming with changed settings that do not affect the checkpoints: '
                 f'{fmt(harmless)}.')
  if bad and not allow_change:
    raise ConfigChangeError(
        f'--workdir={workdir!r} holds checkpoints of another config; changed: {fmt(bad)}. '
        'Use a new --workdir, restore the old values, or pass --allow_config_change to resume '
        'with the new config anyway.')
  if bad:
    progress.say(f'Resuming with a changed config (--allow_config_change): {fmt(bad)}.')


class ConfigChangeError(ValueError):
  """A rerun on a workdir whose checkpoints were trained with a different config."""


def has_checkpoints(workdir: str) -> bool:
  ckpt = epath.Path(workdir) / CHECKPOINT_DIR
  return ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir())


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes config.json (process 0). Under existing checkpoints the old file is kept beside it
  as config.<time>.json first: it still describes the older checkpoints."""
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir) / CONFIG_FILE
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if path.exists() and has_checkpoints(workdir):
    if json.loads(path.read_text()) == json.loads(text):
      return
    path.rename(path.parent / f'config.{int(time.time())}.json')
  path.write_text(text)


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
