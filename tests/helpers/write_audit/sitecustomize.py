"""Test-only: log every file this process opens for writing (Python's open) to $SIMCLR_WRITE_AUDIT.

tests/test_multiprocess.py puts this folder on PYTHONPATH of one run's processes to check that
only process 0 writes results.json, the plot and config.json.
"""

import builtins
import os

_LOG = os.environ.get('SIMCLR_WRITE_AUDIT')
if _LOG:
  _open = builtins.open

  def _audited_open(file, mode='r', *args, **kwargs):
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in 'wax+'):
      path = os.path.realpath(os.fsdecode(file))
      if path != os.path.realpath(_LOG):
        with _open(_LOG, 'a') as f:
          f.write(path + '\n')
    return _open(file, mode, *args, **kwargs)

  builtins.open = _audited_open
  open(_LOG, 'a').close()
