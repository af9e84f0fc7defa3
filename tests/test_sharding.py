"""Mesh and batch layout: global arrays built from host-local batches keep every row, in order."""

import jax
import numpy as np

from simclr_jax import sharding


def test_mesh_spans_all_devices_with_auto_axis():
  mesh = sharding.make_mesh()
  assert mesh.size == jax.device_count() == 8
  assert mesh.axis_names == ('data',)
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,)


def test_global_batch_is_row_sharded_and_lossless():
  mesh = sharding.make_mesh()
  local = {'views': np.arange(16 * 2 * 3, dtype=np.uint8).reshape(16, 2, 3),
           'label': np.arange(16, dtype=np.int32)}
  batch = sharding.global_batch(local, mesh)
  for key, x in batch.items():
    np.testing.assert_array_equal(np.asarray(x), local[key])
    assert x.sharding.spec == jax.sharding.PartitionSpec('data')
    # Each device holds 16 / 8 = 2 consecutive rows.
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start)
    assert [s.data.shape[0] for s in shards] == [2] * 8
    np.testing.assert_array_equal(np.asarray(shards[3].data), local[key][6:8])


def test_replicated_puts_a_full_copy_on_every_device():
  mesh = sharding.make_mesh()
  x = jax.device_put(np.ones((3, 4), np.float32), sharding.replicated(mesh))
  assert all(s.data.shape == (3, 4) for s in x.addressable_shards)
  assert len(x.addressable_shards) == 8
