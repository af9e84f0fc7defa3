"""utilization.py: XLA's FLOP count of a sharded step, summed over devices, and the CPU peak."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax.plan import chips
from simclr_jax import sharding
from simclr_jax.plan import utilization


def test_step_flops_counts_a_sharded_matmul_once_over_all_devices():
  """A [B, n] @ [n, m] product with B split over 8 devices is 2 B n m FLOPs in all (by hand),
  whatever the number of devices: the per-device program's count times the device count."""
  mesh = sharding.make_mesh()
  assert mesh.size == 8
  b, n, m = 64, 96, 32
  x = sharding.global_batch({'x': np.ones((b, n), np.float32)}, mesh)['x']
  w = jnp.ones((n, m))
  f = jax.jit(lambda x, w: x @ w)
  flops = utilization.step_flops(f, x, w)
  assert flops == pytest.approx(2 * b * n * m, rel=0.01)
  one = utilization.step_flops(f, jnp.ones((b, n)), w)  # One device: same total.
  assert one == pytest.approx(flops, rel=0.01)


def test_step_flops_is_none_for_a_function_that_cannot_be_lowered():
  assert utilization.step_flops(lambda x: x, 1.0) is None


def test_cpu_peak_is_one_host_measured_and_said_so():
  pk = utilization.peak(jax.devices())
  assert pk.flops_per_second == chips.measure_cpu_peak_flops()
  assert 1e9 < pk.flops_per_second < 1e14  # A plausible host, not a datasheet number.
  assert 'measured' in pk.description and '8 emulated device(s)' in pk.description
  line = utilization.describe(2e9, pk, 'cpu')
  assert line.startswith('MFU = 2.0 GFLOP per step')


def test_unknown_device_kind_has_no_peak_and_says_why():
  assert 'no peak for device kind' in utilization.describe(1e9, None, 'Mystery chip')
