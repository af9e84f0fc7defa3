"""Orbax checkpoints in `workdir/checkpoints/<step>/` plus `workdir/config.json`.

A checkpoint holds the whole TrainState (step, params, batch_stats, opt_state), which is all a
resume needs: the data stream and augmentations are functions of (seed, step), and there is no
other RNG state. Saves are atomic (Orbax writes to a temporary directory and renames), so a
preempted save never corrupts the last good checkpoint.

Restoring on a pod: process 0 lists the checkpoints and picks the step (every host restores the
same one, whatever its own, possibly stale, listing says); every host reads its shards with no
collective inside the read; then the hosts compare outcomes. A checkpoint whose files are damaged
(lost or truncated, e.g. by an interrupted copy to gs://) on EVERY host is moved aside to
`damaged_checkpoints/`, never deleted, and the next older one is tried. Any other failure (a
read that fails on some hosts only, a tree that does not fit the config, a storage or memory
error) stops every host with one line naming the step and the error, and moves nothing.

config.json describes the checkpoints beside it: a rerun whose config changes the model, the data
or the optimiser is refused (listing every changed key) unless explicitly allowed, and the file
is never rewritten under checkpoints that depend on it.
"""

import json
import os
import time
from typing import Any, Optional
import uuid

from etils import epath
from flax import traverse_util
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
                 'data.data_dir', 'data.download', 'data.max_corrupt_fraction', 'linear_eval.',
                 'model.conv_impl', 'model.remat')


def manager(workdir: str, keep: int = 2, create: bool = True,
            alone: bool = False) -> ocp.CheckpointManager:
  """`alone`: for a listing by one process (cluster.process_0_does runs it on process 0 only):
  Orbax's constructor otherwise waits in a barrier for every process, which never come."""
  if jax.default_backend() == 'cpu':
    # Emulated CPU devices share one host, so replica-parallel saving buys nothing and costs one
    # eager slice compile per array and device (10-20 s on the first save of the test model).
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
  me = jax.process_index()
  processes = (ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
               if alone else ocp.options.MultiprocessingOptions())
  return ocp.CheckpointManager(
      epath.Path(workdir) / CHECKPOINT_DIR,
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                           multiprocessing_options=processes))


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
  mngr.save(step, args=ocp.args.StandardSave(state))


def restore(mngr: ocp.CheckpointManager, target: Any, step: Optional[int] = None) -> Any:
  """Restore into the structure, dtypes and shardings of `target` (a state or its abstract twin)."""
  step = mngr.latest_step() if step is None else step
  return read(mngr.directory, step, jax.tree.map(ocp.utils.to_shape_dtype_struct, target))


def read(directory, step: int, abstract: Any, partial: bool = False) -> Any:
  """Checkpoint `step` of the checkpoints `directory`, restored into `abstract` (a tree of
  jax.ShapeDtypeStruct with shardings; `partial`: only the subtrees it names).

  Each process reads its own shards; unlike Orbax's Checkpointer.restore there is no barrier at
  the end, so a read that fails on one host cannot leave the others waiting in it: callers
  compare the outcomes themselves (restore_latest).
  """
  handler = ocp.PyTreeCheckpointHandler()
  try:
    return handler.restore(
        epath.Path(directory) / str(step) / ITEM, args=ocp.args.PyTreeRestore(
            item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=partial))
  finally:
    handler.close()


ITEM = 'default'  # The Orbax item directory of CheckpointManager's single StandardSave item.
# Status codes with which tensorstore reports a file that is missing, short or garbled.
_FILE_DAMAGE = ('NOT_FOUND', 'OUT_OF_RANGE', 'DATA_LOSS')


class RestoreError(RuntimeError):
  """A checkpoint could not be restored, for a reason other than file damage seen by every
  host; nothing was moved. The message names the step, the processes and the error."""


def is_file_damage(e: BaseException) -> bool:
  """Whether a failed read means damaged files (missing, truncated, undecodable metadata), as
  opposed to a tree mismatch, a permission or quota error, or running out of memory."""
  return (isinstance(e, (FileNotFoundError, json.JSONDecodeError))
          or str(e).lstrip().startswith(_FILE_DAMAGE))


def list_steps(mngr: ocp.CheckpointManager) -> list[int]:
  """Checkpoint steps, newest first, as process 0 lists them, on every process."""
  def listing():
    mngr.reload()  # Another job may have written since the manager was created.
    return sorted((int(s) for s in mngr.all_steps()), reverse=True)
  from simclr_jax import cluster  # pylint: disable=g-import-not-at-top
  return cluster.process_0_does(listing, f'listing the checkpoints in {mngr.directory}')


def restore_latest(mngr: ocp.CheckpointManager, state: Any) -> tuple[Any, int]:
  """(state restored from the newest readable checkpoint, its step), or (state, 0) if none.

  A checkpoint that every process finds damaged is reported, moved to
  <workdir>/damaged_checkpoints/<step>-<time> (never deleted) and the next older one is tried;
  any other failure raises RestoreError on every process, moving nothing.
  """
  from simclr_jax import cluster  # pylint: disable=g-import-not-at-top
  from simclr_jax import progress  # pylint: disable=g-import-not-at-top
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  for step in list_steps(mngr):
    restored, report = None, ''
    try:
      restored = read(mngr.directory, step, abstract)
    except Exception as e:  # pylint: disable=broad-except  # Compared across hosts below.
      text = ' '.join(str(e).split())[:400] or repr(e)
      report = ('damaged: ' if is_file_damage(e) else '') + f'{type(e).__name__}: {text}'
    reports = cluster.gather_texts(report)
    failed = [i for i, r in enumerate(reports) if r]
    if not failed:
      mngr.reload()
      return restored, step
    reason = reports[failed[0]].removeprefix('damaged: ')
    if len(failed) == len(reports) and all(r.startswith('damaged: ') for r in reports):
      moved = cluster.process_0_does(lambda s=step: _move_aside(mngr, s),
                                     f'moving damaged checkpoint {step} aside')
      mngr.reload()
      progress.say(f'warning: checkpoint step {step} in {mngr.directory} cannot be restored '
                   f'({reason}); moved to {moved}, trying the previous one.')
      continue
    where = ('' if len(reports) == 1 else
             f' on process{"es" if len(failed) > 1 else ""} '
             f'{", ".join(map(str, failed[:8]))} of {len(reports)}')
    fit = 'do not match' in reason or 'not compatible' in reason
    raise RestoreError(
        f'checkpoint step {step} in {mngr.directory} could not be restored{where} ({reason}); '
        'nothing was moved. ' + (
            'It does not fit this config\'s model or optimiser: resume with the config it was '
            'written with (config.json beside it), or use a new --workdir.' if fit else
            'Fix the cause (storage access, memory) and rerun the same command to resume.'))
  return state, 0


def _move_aside(mngr: ocp.CheckpointManager, step: int) -> str:
  """Moves checkpoint `step` to <workdir>/damaged_checkpoints/<step>-<time> (process 0 only),
  so a new save of that step cannot collide with it and no cleanup policy deletes good ones
  for it. Returns where it went."""
  src = epath.Path(mngr.directory) / str(step)
  dst = epath.Path(mngr.directory).parent / DAMAGED_DIR / f'{step}-{int(time.time())}'
  dst.parent.mkdir(parents=True, exist_ok=True)
  src.rename(dst)
  return str(dst)


def flat(config: dict) -> dict:
  """{'group.key': value} of a nested config dict."""
  return traverse_util.flatten_dict(config, sep='.')


# Keys added after runs were written, with the value that reproduces those runs: absent in an old
# config.json and at this value now is no change.
ADDED_KEYS = {'aug.on_device': False, 'model.conv_impl': 'xla', 'train.profile_steps': 0,
              'data.max_corrupt_fraction': 0.001, 'model.remat': False,
              'distill.teacher_checkpoint': None, 'distill.temperature': 1.0,
              'distill.alpha': 0.0, 'distill.tau_squared': False,
              'loss.type': 'nt_xent', 'loss.margin': 0.4, 'loss.semi_hard': False,
              'aug.cutout': False, 'aug.sobel': False, 'aug.noise': False, 'aug.rotate': False,
              'aug.asymmetric': False}


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
  config.json except for harmless keys (logging, cadences, evaluation). Raises ConfigChangeError
  listing each changed key with its old and new value, unless `allow_change`. Process 0 reads
  and decides; every process raises alike."""
  from simclr_jax import cluster  # pylint: disable=g-import-not-at-top
  from simclr_jax import progress  # pylint: disable=g-import-not-at-top

  def compare():
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists() or not has_checkpoints(workdir):
      return [], []
    return config_changes(json.loads(path.read_text()),
                          json.loads(config.to_json_best_effort()))

  bad, harmless = cluster.process_0_does(compare, f'reading {workdir}/{CONFIG_FILE}')
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
  """Writes config.json (process 0; its failure stops every process). Under existing
  checkpoints the old file is kept beside it as config.<time>.json first: it still describes
  the older checkpoints."""
  from simclr_jax import cluster  # pylint: disable=g-import-not-at-top

  def write():
    path = epath.Path(workdir) / CONFIG_FILE
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if path.exists() and has_checkpoints(workdir):
      if json.loads(path.read_text()) == json.loads(text):
        return
      path.rename(path.parent / f'config.{int(time.time())}.json')
    path.write_text(text)

  cluster.process_0_does(write, f'writing {workdir}/{CONFIG_FILE}')


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (as saved by `write_config`)."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f'{path} not found: is {workdir!r} a simclr_jax workdir?')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def check_workdir_writable(workdir: str) -> None:
  """Fail before any compilation, on every process alike, if the workdir cannot be created or
  written by any process. The probe's name is unique (a pid alone repeats across hosts)."""
  from simclr_jax import cluster  # pylint: disable=g-import-not-at-top

  def probe():
    if workdir.startswith('gs://'):
      return  # Checked by process 0's first write (gcsfs permissions need a write to know).
    try:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, f'.write_probe_{uuid.uuid4().hex}')
      with open(path, 'w') as f:
        f.write('ok')
      os.remove(path)
    except OSError as e:
      raise PermissionError(f'--workdir={workdir!r} is not writable ({e.strerror}); pass a '
                            'directory you can create and write.') from e

  cluster.every_process_does(probe, f'probing {workdir}')
