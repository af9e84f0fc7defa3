"""The device mesh and how arrays are laid out on it: parameters replicated, batches sharded.

One 1-D mesh axis, 'data', spans every device of every process. Axes are `AxisType.Auto` so that
XLA's partitioner may place the contraction of the loss freely (under this jax's default Explicit
axes, `z @ z.T` on a batch-sharded z is a type error).
"""

from typing import Any, Optional, Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA_AXIS = 'data'


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'; all other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Host-local numpy batch (leading axis = global_batch // process_count) -> global jax.Arrays."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)

