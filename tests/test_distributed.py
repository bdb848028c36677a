"""Two real JAX processes on localhost (gloo CPU collectives) see one 4-device world and reduce across it."""

import importlib.machinery
import importlib.util
import json
import pathlib
import socket
import sys

import jax
import pytest

from unet_jax import distributed, launch_local

# Generous for 2 shared cores (a healthy run takes a few seconds), finite so a hang fails the test.
_TIMEOUT_S = 120


def test_two_processes_reduce_over_four_devices():
  results = launch_local.launch(
    [sys.executable, __file__], num_processes=2, local_devices=2, timeout_s=_TIMEOUT_S, echo=False
  )
  for r in results:
    assert r.returncode == 0, f"process {r.process_id} failed:\n{r.output}"
  # The report is the last JSON line; gloo prints its own connection lines to the same stream, in any order and
  # sometimes onto the report's line without a newline, so only the JSON object at the line's start is decoded.
  reports = [
    json.JSONDecoder().raw_decode([line for line in r.output.splitlines() if line.startswith("{")][-1])[0]
    for r in results
  ]

  assert [r["process_index"] for r in reports] == [0, 1]
  for r in reports:
    assert r["process_count"] == 2
    assert r["device_count"] == 4
    assert r["local_device_count"] == 2
    assert r["psum"] == 0 + 1 + 2 + 3  # one value per device, summed over both processes.
    assert r["jit_sum"] == 6
    assert r["all_gather"] == [0, 1, 2, 3]
    assert r["owners"] == [0, 0, 1, 1]  # The process that holds each device, in global device order.
    assert r["start_line"].startswith("processes=2 devices=4 local_devices=2")


@pytest.fixture
def no_cluster_env(monkeypatch):
  """The test process may itself run under a scheduler's variables; start from none."""
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
  "env, match",
  [
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "missing: coordinator_address"),
    ({"JAX_COORDINATOR_ADDRESS": "localhost", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "HOST:PORT"),
    ({"JAX_COORDINATOR_ADDRESS": "localhost:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "process_id=2"),
    ({"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two' is not an integer"),
  ],
)
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


_TPU_ENV_VARS = (
  "TPU_WORKER_HOSTNAMES",
  "TPU_PROCESS_ADDRESSES",
  "MEGASCALE_COORDINATOR_ADDRESS",
  "TPU_SKIP_MDS_QUERY",
  "TPU_LIBRARY_PATH",
)


def _pci_device(root: pathlib.Path, address: str, vendor: str, device: str) -> None:
  (root / address).mkdir(parents=True)
  (root / address / "vendor").write_text(vendor + "\n")
  (root / address / "device").write_text(device + "\n")


@pytest.fixture
def jax_platforms():
  """Sets jax.config.jax_platforms for one test (conftest runs the suite with JAX_PLATFORMS=cpu)."""
  before = jax.config.jax_platforms
  yield lambda value: jax.config.update("jax_platforms", value)
  jax.config.update("jax_platforms", before)


@pytest.fixture
def machine(tmp_path, monkeypatch, no_cluster_env, jax_platforms):
  """A fake sysfs PCI bus and /dev: a GCE CPU VM's Google NIC and NVMe, an NVIDIA GPU, VFIO and the generic accel
  class (an NPU), but no TPU; no network, and libtpu installed only when a test says so."""
  pci, dev = tmp_path / "pci", tmp_path / "dev"
  _pci_device(pci, "0000:00:04.0", "0x1ae0", "0x0042")  # gVNIC.
  _pci_device(pci, "0000:00:05.0", "0x1ae0", "0x001f")  # Google NVMe.
  _pci_device(pci, "0000:00:06.0", "0x10de", "0x2330")  # NVIDIA H100.
  (dev / "vfio").mkdir(parents=True)
  (dev / "vfio" / "vfio").touch()
  (dev / "accel").mkdir()
  (dev / "accel" / "accel0").touch()
  monkeypatch.setattr(distributed, "_PCI_DEVICES_DIR", pci)
  monkeypatch.setattr(distributed, "_DEV_DIR", dev)
  for name in _TPU_ENV_VARS:
    monkeypatch.delenv(name, raising=False)
  libtpu = {"installed": False}
  real_find_spec = importlib.util.find_spec

  def find_spec(name, *args, **kwargs):
    if name == "libtpu":
      return importlib.machinery.ModuleSpec("libtpu", None) if libtpu["installed"] else None
    return real_find_spec(name, *args, **kwargs)

  def no_network(*args, **kwargs):
    raise AssertionError(f"network call {args} while detecting a TPU VM")

  monkeypatch.setattr(importlib.util, "find_spec", find_spec)
  monkeypatch.setattr(socket, "create_connection", no_network)
  monkeypatch.setattr(socket, "getaddrinfo", no_network)
  monkeypatch.setattr(socket.socket, "connect", no_network)
  jax_platforms(None)  # As on a TPU VM: not set.
  return {"pci": pci, "dev": dev, "libtpu": libtpu}


def test_cpu_machine_with_libtpu_is_not_a_tpu_vm(machine):
  """CPU machines install libtpu to compile for TPUs ahead of time; that alone must not start a pod run."""
  assert not distributed._on_cloud_tpu_vm()
  machine["libtpu"]["installed"] = True
  assert not distributed._on_cloud_tpu_vm()


@pytest.mark.parametrize("chips", ["pci_v5e", "pci_v4", "dev_accel"])
def test_tpu_vm_is_found_from_its_chips_and_libtpu(machine, monkeypatch, jax_platforms, chips):
  if chips == "dev_accel":  # TPU v2-v4 device files, e.g. where sysfs is not mounted.
    (machine["dev"] / "accel0").touch()
  else:
    _pci_device(machine["pci"], "0000:00:07.0", "0x1ae0", {"pci_v5e": "0x0063", "pci_v4": "0x005e"}[chips])
  assert not distributed._on_cloud_tpu_vm()  # Chips without libtpu: JAX cannot use them.
  machine["libtpu"]["installed"] = True
  assert distributed._on_cloud_tpu_vm()
  jax_platforms("cpu")
  assert not distributed._on_cloud_tpu_vm()  # The run will not use the chips, so there is no slice to join.
  jax_platforms("tpu,cpu")
  assert distributed._on_cloud_tpu_vm()
  monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")
  assert not distributed._on_cloud_tpu_vm()  # No metadata to discover the slice from, and no worker list.


def test_tpu_library_path_counts_as_libtpu(machine, tmp_path, monkeypatch):
  _pci_device(machine["pci"], "0000:00:07.0", "0x1ae0", "0x006f")
  monkeypatch.setenv("TPU_LIBRARY_PATH", str(tmp_path / "missing.so"))
  assert not distributed._on_cloud_tpu_vm()
  (tmp_path / "libtpu.so").touch()
  monkeypatch.setenv("TPU_LIBRARY_PATH", str(tmp_path / "libtpu.so"))
  assert distributed._on_cloud_tpu_vm()


@pytest.mark.parametrize("name", ["TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS"])
def test_gke_and_multislice_pods_are_found_from_their_worker_list(machine, monkeypatch, name):
  monkeypatch.setenv(name, "10.0.0.1,10.0.0.2")
  assert distributed._on_cloud_tpu_vm()


def test_initialize_leaves_the_slice_to_jax_auto_detection_only_on_a_tpu_vm(machine, monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *args, **kwargs: calls.append((args, kwargs)))
  machine["libtpu"]["installed"] = True
  distributed.initialize()
  assert calls == []
  (machine["dev"] / "accel0").touch()
  distributed.initialize()
  assert calls == [((), {})]


def _worker() -> None:
  """One of the two processes: joins via the launcher's environment, then runs its collectives.

  Every result is awaited on all local devices before it is read. Reading a replicated output's
  `addressable_data(0)` (all `multihost_utils.process_allgather` does) waits for the first device alone; if the
  other process then exits while this one's second device is still forming a gloo communicator with it, this
  process blocks at exit, waiting for that device.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P

  distributed.initialize()
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  sharded, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  # Each process contributes the values of its own devices: process 0 -> [0, 1], process 1 -> [2, 3].
  local = np.arange(jax.local_device_count(), dtype=np.int32) + jax.process_index() * jax.local_device_count()
  x = jax.make_array_from_process_local_data(sharded, local)
  owners = jax.make_array_from_process_local_data(
    sharded, np.full(jax.local_device_count(), jax.process_index(), np.int32)
  )
  gather = jax.jit(lambda a: a, out_shardings=replicated)
  results = jax.block_until_ready(
    {
      "psum": jax.jit(
        jax.shard_map(lambda block: jax.lax.psum(block, "data"), mesh=mesh, in_specs=P("data"), out_specs=P())
      )(x),
      "jit_sum": jax.jit(jnp.sum, out_shardings=replicated)(x),
      "all_gather": gather(x),
      "owners": gather(owners),
    }
  )
  local_results = {name: np.asarray(value.addressable_data(0)) for name, value in results.items()}
  print(
    json.dumps(
      {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "psum": int(local_results["psum"][0]),
        "jit_sum": int(local_results["jit_sum"]),
        "all_gather": local_results["all_gather"].tolist(),
        "owners": local_results["owners"].tolist(),
        "start_line": distributed.describe_run(mesh, global_batch_size=8),
      }
    ),
    flush=True,
  )


if __name__ == "__main__":
  _worker()
