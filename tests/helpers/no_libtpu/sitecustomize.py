"""On PYTHONPATH, hides the libtpu package (as on a machine without the '[tpu]' extra)."""
import sys


class _HideLibtpu:

  def find_spec(self, name, path=None, target=None):  # pylint: disable=unused-argument
    if name == 'libtpu' or name.startswith('libtpu.'):
      raise ModuleNotFoundError(f'No module named {name!r} (hidden by tests)', name=name)
    return None


sys.meta_path.insert(0, _HideLibtpu())
