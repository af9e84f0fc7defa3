"""TPU topologies for the compile-only plan: the TPU compiler (libtpu) on a machine without TPUs.

`jax.experimental.topologies.get_topology_desc` gives the devices of any TPU slice (each with its
host, `process_index`) from libtpu alone, and `jit(...).lower(...).compile()` on a mesh of them
runs the real TPU compiler: its memory_analysis and cost_analysis are the chip's, not XLA:CPU's.
libtpu comes with `pip install -e '.[tpu]'` (what a TPU VM installs anyway).
"""

import importlib.util
import math
import os
import re
from typing import Optional

# chips.py key -> (topology prefix, JAX devices per chip, torus dimensions).
GENERATIONS = {'tpu_v3': ('v3', 2, 2), 'tpu_v4': ('v4', 1, 3), 'tpu_v5e': ('v5e', 1, 2),
               'tpu_v5p': ('v5p', 1, 3), 'tpu_v6e': ('v6e', 1, 2)}
_PREFIX_TO_KEY = {p: k for k, (p, _, _) in GENERATIONS.items()}
_TOPOLOGY = re.compile(r'^(v\d+[a-z]*):(\d+(?:x\d+)+)$')
INSTALL = ("the TPU compiler (libtpu) is not installed: pip install -e '.[tpu]' "
           '(or libtpu==0.0.42.1, the version jax 0.10.2 pins)')


class TopologyError(ValueError):
  """A topology or chip the TPU compiler cannot target; the message says what would work."""


def available() -> bool:
  try:
    return importlib.util.find_spec('libtpu') is not None
  except ImportError:  # A broken or blocked install counts as none.
    return False


def chip_key(topology: str) -> str:
  """'v3:8x8' -> 'tpu_v3' (chips.py's key)."""
  m = _TOPOLOGY.match(topology)
  if not m or m.group(1) not in _PREFIX_TO_KEY:
    raise TopologyError(f'--topology={topology!r} is not a TPU topology; allowed: '
                        f'{sorted(_PREFIX_TO_KEY)} and chip counts per torus axis, e.g. '
                        "'v3:8x8' (v3-128), 'v4:2x2x4' (v4-32), 'v5e:4x4'")
  return _PREFIX_TO_KEY[m.group(1)]


def default_topology(key: str, num_devices: int) -> str:
  """The usual slice shape of `num_devices` JAX devices of chip `key`: v3 2-D (2 cores a chip,
  4x4 for v3-32, 8x8 for v3-128), v4/v5p 3-D (2x2x4 for 16 chips), v5e/v6e 2-D."""
  if key not in GENERATIONS:
    raise TopologyError(f'chip {key!r} is not a TPU; the TPU compiler targets {list(GENERATIONS)}')
  prefix, per_chip, dims = GENERATIONS[key]
  chips_ = num_devices // per_chip
  if num_devices % per_chip or chips_ < 4 or chips_ & (chips_ - 1):
    raise TopologyError(f'{num_devices} devices of {key}: the TPU compiler takes slices of 4, 8, '
                        f'16, ... chips ({per_chip} device(s) each); name one with --topology')
  shape = [2, 2] if dims == 2 else [2, 2, 1]
  while math.prod(shape) < chips_:  # Double the last smallest axis: 2x2 -> 2x4 -> 4x4 -> 4x8;
    shape[max(a for a in range(dims) if shape[a] == min(shape))] *= 2  # 2x2x1 -> 2x2x2 -> 2x2x4.
  return f'{prefix}:' + 'x'.join(str(s) for s in shape)


def _quiet_libtpu_outside_a_tpu_vm() -> None:
  """libtpu asks the GCE metadata server for the slice it runs on and logs an error line when
  there is none, and takes /tmp/libtpu_lockfile so a second process cannot load it. The plan
  only compiles (JAX itself runs on the CPU), so tell libtpu it is alone and may be loaded by
  several processes at once; a TPU VM's own settings are never overridden."""
  for name, value in (('TPU_SKIP_MDS_QUERY', '1'), ('TPU_WORKER_HOSTNAMES', 'localhost'),
                      ('TPU_ACCELERATOR_TYPE', 'v3-8'), ('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')):
    os.environ.setdefault(name, value)


def devices(topology: str) -> list:
  """The JAX devices of `topology`, for compilation only (they cannot run anything here)."""
  chip_key(topology)
  if not available():
    raise TopologyError(INSTALL)
  _quiet_libtpu_outside_a_tpu_vm()
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    desc = topologies.get_topology_desc(topology_name=topology, platform='tpu')
  except Exception as e:  # pylint: disable=broad-except  # libtpu raises XlaRuntimeError.
    raise TopologyError(f'libtpu does not know topology {topology!r}: '
                        f'{str(e).splitlines()[0]}') from e
  return list(desc.devices)


def describe(devs: list, topology: Optional[str] = None) -> str:
  hosts = len({d.process_index for d in devs})
  return (f'{topology + ": " if topology else ""}{len(devs)} {devs[0].device_kind} devices on '
          f'{hosts} host{"s" if hosts > 1 else ""}')


def device_chip(chip, key: str, devs: list):
  """chips.py's per-device entry for `key`, as the compiled devices see it: libtpu's compile-only
  v4 topology has two devices (TensorCores) per chip where a v4 VM has one megacore device, so
  each gets half the chip's memory and peak."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  per_chip = len(devs) // len({tuple(d.coords) for d in devs})
  split = per_chip // GENERATIONS[key][1]
  if split <= 1:
    return chip
  return dataclasses.replace(
      chip, name=f'{chip.name} / {split} (one TensorCore: the compile-only topology has no '
      'megacore)', memory_bytes=chip.memory_bytes // split, peak_flops=chip.peak_flops / split)
