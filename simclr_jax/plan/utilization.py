"""Model FLOPs utilisation (MFU) of a run: XLA's FLOPs of the compiled step over the hardware peak.

MFU = FLOPs of one step on every device / step time / peak FLOP/s of those devices. The FLOPs are
XLA's cost analysis of the compiled (per-device, partitioned) step program, so they count what the
program computes, including the loss and the optimiser, not an analytic count of the network.
Peaks come from chips.py (dense bf16 per device, from the vendors' pages). On CPU there is no
datasheet figure: the peak is one jitted float32 matmul on all host cores, measured once, and the
emulated CPU devices share it (their FLOPs are summed against one host's peak).
"""

import dataclasses
from typing import Any, Optional

import jax

from simclr_jax.plan import chips


@dataclasses.dataclass(frozen=True)
class Peak:
  flops_per_second: float  # Of all the devices the step runs on (CPU: of the hosts).
  description: str  # Which peak, for the first report.


def step_flops(jitted: Any, *args) -> Optional[float]:
  """FLOPs of one call of `jitted(*args)` summed over its devices, from XLA's cost analysis of the
  compiled program; None if the function cannot be lowered or XLA gives no count. Compiling here
  fills jit's cache, so the first real call does not compile again."""
  try:
    compiled = jitted.lower(*args).compile()
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (a step that cannot be lowered still trains)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get('flops')
  if not flops or flops <= 0:
    return None
  mesh_size = _num_devices(args)
  return float(flops) * mesh_size


def _num_devices(args) -> int:
  """Devices the step's arrays span (the partitioned program runs once on each)."""
  devices = set()
  for leaf in jax.tree.leaves(args):
    sharding = getattr(leaf, 'sharding', None)
    if sharding is not None:
      devices |= set(sharding.device_set)
  return max(len(devices), 1)


def peak(devices=None) -> Optional[Peak]:
  """The peak FLOP/s of `devices` (default: all of the run's), or None for an unknown chip."""
  devices = list(devices if devices is not None else jax.devices())
  kind = devices[0].device_kind
  key = chips.key_for_device_kind(kind)
  if key is None:
    return None
  chip = chips.get(key)
  if key == 'cpu':
    hosts = len({d.process_index for d in devices})
    return Peak(chip.peak_flops * hosts,
                f'{chip.peak_flops / 1e9:,.0f} GFLOP/s per host, a float32 {chip.name.lower()}, '
                f'x {hosts} host(s); the {len(devices)} emulated device(s) share it')
  return Peak(chip.peak_flops * len(devices),
              f'{chip.peak_flops / 1e12:,.1f} TFLOP/s dense bf16 per device ({chip.name}, '
              f'{chip.source}) x {len(devices)} device(s)')


def describe(flops: Optional[float], pk: Optional[Peak], kind: str) -> str:
  """The one line the first progress report adds about MFU."""
  if flops is None:
    return 'MFU: not reported (XLA gave no FLOP count for the step).'
  if pk is None:
    return (f'MFU: not reported (no peak for device kind {kind!r} in simclr_jax/plan/chips.py); '
            f'step: {flops / 1e9:,.1f} GFLOP (XLA cost analysis).')
  return (f'MFU = {flops / 1e9:,.1f} GFLOP per step (XLA cost analysis, all devices) / step time '
          f'/ peak {pk.description}.')
