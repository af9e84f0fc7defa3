"""Test-only fault injection: breaks one thing in THIS process, so that a real multi-process run
can show a host that sees an error, a listing or a file the others do not.

tests/test_multihost_faults.py puts this folder on PYTHONPATH of the processes it starts and sets
SIMCLR_FAULTS (comma-separated) for the one process that must fail:
- restore_fails: reading a checkpoint raises an OSError (a transient storage error).
- stale_listing: the checkpoint listing is empty (NFS attribute caching after a quick requeue).
- marker_unwritable: writing the shared-workdir marker raises PermissionError (a bucket this
  host cannot write).
- pause_at=TEXT: when a progress line containing TEXT is said, print 'FAULT: paused' and sleep
  (so a signal can be sent while the job is certainly at that point, with no race).
"""

import os

_FAULTS = dict(f.split('=', 1) if '=' in f else (f, '') for f in
               os.environ.get('SIMCLR_FAULTS', '').split(',') if f)

if _FAULTS:
  import sys  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  from etils import epath  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from simclr_jax import progress  # pylint: disable=g-import-not-at-top

  if 'restore_fails' in _FAULTS:  # Orbax's reader itself, below every restore path.
    def _read(*args, **kwargs):
      del args, kwargs
      raise OSError('injected storage error on this host')
    ocp.PyTreeCheckpointHandler.restore = _read

  if 'stale_listing' in _FAULTS:
    ocp.CheckpointManager.all_steps = lambda self, *a, **k: []
    ocp.CheckpointManager.latest_step = lambda self, *a, **k: None

  if 'marker_unwritable' in _FAULTS:
    _path_cls = type(epath.Path('/'))
    _write_text = _path_cls.write_text

    def _refuse(self, *args, **kwargs):
      if self.name.startswith('.shared_check_'):
        raise PermissionError(13, f'Permission denied (injected): {self}')
      return _write_text(self, *args, **kwargs)
    _path_cls.write_text = _refuse

  if 'pause_at' in _FAULTS:
    _say = progress.say

    def _say_then_pause(msg):
      _say(msg)
      if _FAULTS['pause_at'] in msg:
        print('FAULT: paused', flush=True)
        print('FAULT: paused', file=sys.stderr, flush=True)
        time.sleep(600)
    progress.say = _say_then_pause
