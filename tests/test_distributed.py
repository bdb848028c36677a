"""Two real JAX processes on localhost (gloo CPU collectives) see one 4-device world and reduce across it."""

import json
import sys

import pytest

from unet_jax import distributed
from unet_jax import launch_local

# Generous for 2 shared cores (a healthy run takes a few seconds), finite so a hang fails the test.
_TIMEOUT_S = 120


def test_two_processes_reduce_over_four_devices():
  results = launch_local.launch([sys.executable, __file__], num_processes=2, local_devices=2,
                                timeout_s=_TIMEOUT_S, echo=False)
  for r in results:
    assert r.returncode == 0, f"process {r.process_id} failed:\n{r.output}"
  # The report is the last JSON line; gloo prints its own connection lines to the same stream, in any order and
  # sometimes onto the report's line without a newline, so only the JSON object at the line's start is decoded.
  reports = [json.JSONDecoder().raw_decode([line for line in r.output.splitlines() if line.startswith("{")][-1])[0]
             for r in results]

  assert [r["process_index"] for r in reports] == [0, 1]
  for r in reports:
    assert r["process_count"] == 2
    assert r["device_count"] == 4
    assert r["local_device_count"] == 2
    assert r["psum"] == 0 + 1 + 2 + 3  # one value per device, summed over both processes.
    assert r["jit_sum"] == 6
    assert r["all_gather"] == [0, 1, 2, 3]
    assert r["process_ids"] == [0, 1]
    assert r["start_line"].startswith("processes=2 devices=4 local_devices=2")


@pytest.fixture
def no_cluster_env(monkeypatch):
  """The test process may itself run under a scheduler's variables; start from none."""
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("env, match", [
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "missing: coordinator_address"),
    ({"JAX_COORDINATOR_ADDRESS": "localhost", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "HOST:PORT"),
    ({"JAX_COORDINATOR_ADDRESS": "localhost:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "process_id=2"),
    ({"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two' is not an integer"),
])
def test_incomplete_or_bad_settings_fail_early(monkeypatch, no_cluster_env, env, match):
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(ValueError, match=match):
    distributed.initialize()


def test_single_process_is_a_no_op(no_cluster_env):
  distributed.initialize()
  distributed.initialize(coordinator_address="localhost:1", num_processes=1, process_id=0)
  import jax  # pylint: disable=g-import-not-at-top
  assert not jax.distributed.is_initialized()
  assert jax.process_count() == 1


def _worker() -> None:
  """One of the two processes: joins via the launcher's environment, then runs three collectives."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top

  distributed.initialize()
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  # Each process contributes the values of its own devices: process 0 -> [0, 1], process 1 -> [2, 3].
  local = np.arange(jax.local_device_count(), dtype=np.int32) + jax.process_index() * jax.local_device_count()
  x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
  psum = jax.jit(jax.shard_map(lambda block: jax.lax.psum(block, "data"), mesh=mesh, in_specs=P("data"),
                               out_specs=P()))(x)
  jit_sum = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
  print(json.dumps({
      "process_index": jax.process_index(),
      "process_count": jax.process_count(),
      "device_count": jax.device_count(),
      "local_device_count": jax.local_device_count(),
      "psum": int(psum.addressable_data(0)[0]),
      "jit_sum": int(jit_sum.addressable_data(0)),
      "all_gather": multihost_utils.process_allgather(x, tiled=True).tolist(),
      "process_ids": multihost_utils.process_allgather(np.int32(jax.process_index())).tolist(),
      "start_line": distributed.describe_run(mesh, global_batch_size=8),
  }), flush=True)


if __name__ == "__main__":
  _worker()
