"""Joins this process to a multi-process JAX run (TPU pod slice, GPU cluster, or CPU rehearsal).

`initialize` must run before anything touches a JAX backend (even `jax.devices()`): the backend is
built once, and only a backend built after `jax.distributed.initialize` sees the other processes'
devices. A single-process run needs nothing, so the trainer calls it unconditionally.
"""

import importlib.util
import os
import pathlib
import re

import jax
from absl import logging

from unet_jax import errors

# Set on GKE TPU pods and multislice jobs: they list the slice's workers, which JAX's auto-detection reads.
_TPU_CLUSTER_ENV_VARS = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS")
# Set: JAX's auto-detection must not ask the Cloud TPU metadata server for the worker list (JAX sets it itself where
# no TPU chip is attached), so only the variables above can describe a slice.
_SKIP_METADATA_ENV_VAR = "TPU_SKIP_MDS_QUERY"
# TPU chips on the PCI bus: Google's vendor id and the TPU device ids (v2/v3, v4, v5p, v5e, v6e, 7x and one
# unnamed), the probe JAX and tpu-info make. Other Google devices (gVNIC, NVMe on any GCE VM) are not TPUs.
_GOOGLE_PCI_VENDOR_ID = "0x1ae0"
_TPU_PCI_DEVICE_IDS = frozenset({"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})
_PCI_DEVICES_DIR = pathlib.Path("/sys/bus/pci/devices")
# TPU v2-v4 chips appear as /dev/accel0, /dev/accel1, ... (later ones as /dev/vfio/N, which any VFIO passthrough
# also creates, so those count only through the PCI probe). The kernel's generic accel class is /dev/accel/accelN.
_DEV_DIR = pathlib.Path("/dev")
_TPU_DEVICE_FILE = re.compile(r"accel\d+")


def initialize(coordinator_address: str = "", num_processes: int = -1, process_id: int = -1) -> None:
  """Starts `jax.distributed` when this run spans several processes; otherwise does nothing.

  Explicit arguments win over the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
  and JAX_PROCESS_ID ("" / -1 mean "not given"). With none of them, a Cloud TPU VM lets JAX discover
  the slice itself (worker list and ids from the TPU metadata); anywhere else it is a single process.
  Calling it again after a successful start is a no-op, so tests may run the trainer twice.
  """
  if jax.distributed.is_initialized():
    return
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  if num_processes < 0:
    num_processes = _int_from_env("JAX_NUM_PROCESSES")
  if process_id < 0:
    process_id = _int_from_env("JAX_PROCESS_ID")

  if not coordinator_address and num_processes < 0 and process_id < 0:
    if _on_cloud_tpu_vm():
      jax.distributed.initialize()
    return
  _check_explicit(coordinator_address, num_processes, process_id)
  if num_processes == 1:
    return
  # CPU processes exchange collectives over TCP with gloo; without it a cross-process psum on CPU fails.
  # It only configures the CPU client, so GPU processes are unaffected.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  logging.info(
    "Joining a %d-process run as process %d via coordinator %s.", num_processes, process_id, coordinator_address
  )
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )
  if jax.default_backend() == "cpu":
    # gloo connects the processes at their first collective and gives up after 30 s, so all must reach it together.
    # A persistent compilation cache breaks that: on CPU its keys differ per process and only process 0 writes
    # it, so process 0 would load the train step in a second while the others compile it for a minute.
    jax.config.update("jax_enable_compilation_cache", False)


def describe_run(mesh: jax.sharding.Mesh, global_batch_size: int) -> str:
  """The run's start line: who takes part, on which devices, and how the batch splits.

  The trainer logs it once (on process 0); every number a multi-host bug report needs is in it.
  """
  local_devices = jax.local_devices()
  kinds = sorted({d.device_kind for d in local_devices})
  mesh_shape = ", ".join(f"{name}={size}" for name, size in mesh.shape.items())
  return (
    f"processes={jax.process_count()} devices={jax.device_count()} "
    f"local_devices={len(local_devices)} ({', '.join(kinds)}) mesh=({mesh_shape}) "
    f"global_batch={global_batch_size} local_batch={global_batch_size // jax.process_count()}"
  )


def _int_from_env(name: str) -> int:
  value = os.environ.get(name, "")
  if not value:
    return -1
  try:
    return int(value)
  except ValueError:
    raise errors.ConfigError(
      f"Environment variable {name}={value!r} is not an integer; set it to a whole number "
      f"or unset it for a single-process run."
    ) from None


def _check_explicit(coordinator_address: str, num_processes: int, process_id: int) -> None:
  """Fails early, naming the missing piece, instead of letting every process wait out a timeout."""
  missing = [
    name
    for name, unset in (
      ("coordinator_address (JAX_COORDINATOR_ADDRESS)", not coordinator_address),
      ("num_processes (JAX_NUM_PROCESSES)", num_processes < 0),
      ("process_id (JAX_PROCESS_ID)", process_id < 0),
    )
    if unset
  ]
  if missing:
    raise errors.ConfigError(
      f"A multi-process run needs coordinator_address, num_processes and process_id together; "
      f"missing: {', '.join(missing)}. Got coordinator_address={coordinator_address!r}, "
      f"num_processes={num_processes}, process_id={process_id}. Give all three (flags or "
      f"environment variables), or none of them for a single process."
    )
  host, _, port = coordinator_address.rpartition(":")
  if not host or not port.isdigit():
    raise errors.ConfigError(
      f"coordinator_address={coordinator_address!r} must be HOST:PORT of process 0, "
      f"e.g. '10.0.0.1:1234' or 'localhost:12355'."
    )
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise errors.ConfigError(
      f"process_id={process_id} must be in [0, num_processes={num_processes}); number the "
      f"processes 0, 1, ..., num_processes - 1 with process 0 on the coordinator's host."
    )


def _on_cloud_tpu_vm() -> bool:
  """True where a bare `jax.distributed.initialize()` can find a TPU slice, decided from local state only.

  No network call: the metadata server exists only on Google Cloud, and JAX's auto-detection asks it only after this
  says yes. GKE and multislice pods name their workers in environment variables; a Cloud TPU VM has TPU chips
  attached and libtpu installed. libtpu alone is no sign (CPU machines install it to compile for TPUs ahead of time),
  nor are chips that the run will not use (JAX_PLATFORMS without "tpu", e.g. tests on a TPU VM).
  """
  if any(os.environ.get(name) for name in _TPU_CLUSTER_ENV_VARS):
    return True
  if _SKIP_METADATA_ENV_VAR in os.environ or not _tpu_chips_attached():
    return False
  platforms = jax.config.jax_platforms
  if platforms and "tpu" not in platforms.split(","):
    return False
  if not _libtpu_installed():
    logging.warning(
      "TPU chips are attached but libtpu is not installed, so JAX cannot use them: running as one "
      "process on JAX's default backend. Install it with `pip install 'jax[tpu]'`."
    )
    return False
  return True


def _tpu_chips_attached() -> bool:
  """TPU chips on the PCI bus, or TPU device files; reads sysfs and /dev only."""
  for device in _PCI_DEVICES_DIR.glob("*"):
    try:
      vendor, device_id = ((device / name).read_text().strip() for name in ("vendor", "device"))
    except OSError:
      continue
    if vendor == _GOOGLE_PCI_VENDOR_ID and device_id in _TPU_PCI_DEVICE_IDS:
      return True
  return any(_TPU_DEVICE_FILE.fullmatch(path.name) and not path.is_dir() for path in _DEV_DIR.glob("accel*"))


def _libtpu_installed() -> bool:
  """The TPU runtime JAX loads: the libtpu package, or a library file named by TPU_LIBRARY_PATH."""
  library_path = os.environ.get("TPU_LIBRARY_PATH", "")
  return bool(library_path and os.path.isfile(library_path)) or importlib.util.find_spec("libtpu") is not None
