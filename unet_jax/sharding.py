"""Data parallelism over every device of every process: one mesh axis, state replicated, batch split along it."""

from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (None: all devices of all processes). Auto axes: jit propagates shardings (GSPMD)
  inside the model. Ahead-of-time compilation passes a TPU topology's compile-only devices."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def platform(mesh: Mesh) -> str:
  """The platform ("cpu", "gpu", "tpu") of the mesh's devices: what programs sharded over it are compiled for."""
  return mesh.devices.flat[0].platform


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data axis; the rest of each array whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's slice of a global batch -> global arrays (the same call on every process builds the batch)."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def local_rows(array: jax.Array, mesh: Mesh) -> np.ndarray:
  """This process's rows of a batch-sharded global array (the rows its own local batch fed), as numpy."""
  return np.asarray(multihost_utils.global_array_to_host_local_array(array, mesh, PartitionSpec(DATA_AXIS)))
