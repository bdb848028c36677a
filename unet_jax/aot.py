"""The trainer's programs compiled for a TPU slice on any machine: `python -m unet_jax.aot --config C --topology v5e-8`.

A TPU runtime (`libtpu`, from `pip install -e ".[tpu]"`) compiles for a TPU topology without TPUs: the topology's
compile-only devices make the mesh, and `jit(...).lower(abstract arguments).compile()` gives the real TPU executable.
What is compiled is exactly what `unet_jax.train` runs: `trainer.make_train_fn` over the config's state (optimizer
masking, shardings, donation; shapes only, no weights loaded, no data read) for each phase the config has, and the
eval step of `evaluation.make_eval_fn`. For each program it reports XLA's own per-device analyses (memory, flops, bytes
accessed), the collectives in the optimised HLO, and a roofline bound on the step time from each chip's published peak
bf16 FLOP/s and HBM bandwidth. The bound ignores the collectives' time and the host's input pipeline, so it is an
upper bound on images/s: a pod configuration that does not fit, or whose bound is too slow, is found before paying for
the slice.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # The host compiles; no local accelerator is needed or touched.
# The TPU runtime starts as on a TPU VM unless told otherwise; the topology compiled for is given explicitly, so these
# only keep it from asking a metadata server and warning that it found no accelerator type or workers.
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
# Compiling touches no chip, so several processes may load the runtime at once (parallel tests, a second terminal).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import dataclasses
import importlib.metadata
import json
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags

from unet_jax import cli, errors, evaluation, sharding, train_state, trainer


@dataclasses.dataclass(frozen=True)
class Chip:
  """A TPU chip's published figures: HBM per chip, peak dense bf16 FLOP/s and HBM bandwidth per chip."""

  hbm_bytes: int
  peak_bf16_flops: float
  hbm_bytes_per_s: float
  source: str


GIB = 1 << 30
# Google Cloud's system architecture pages, one per generation.
CHIPS = {
  "v4": Chip(32 * GIB, 275e12, 1228e9, "https://cloud.google.com/tpu/docs/v4"),
  "v5e": Chip(16 * GIB, 197e12, 819e9, "https://cloud.google.com/tpu/docs/v5e"),
  "v5p": Chip(95 * GIB, 459e12, 2765e9, "https://cloud.google.com/tpu/docs/v5p"),
  "v6e": Chip(32 * GIB, 918e12, 1640e9, "https://cloud.google.com/tpu/docs/v6e"),
}


@dataclasses.dataclass(frozen=True)
class Slice:
  """A TPU slice as `gcloud` names it (`v5e-8`), and the topology that libtpu describes it by."""

  chip: str
  topology: str  # libtpu's topology name: "<chip>:<chips along each axis>".
  chips_per_host: tuple[int, int, int]  # How many chips each host (TPU VM) has along each axis.

  @property
  def megacore(self) -> bool:
    """v4 and v5p chips hold two TensorCores that JAX drives as one device; slice names count TensorCores."""
    return self.chip in ("v4", "v5p")


def _slices() -> dict[str, Slice]:
  # v4 / v5p: names count TensorCores (2 per chip), 3-D tori, 4 chips per host. v5e / v6e: names count chips, 2-D,
  # up to 8 chips on one host, 4 per host in larger slices.
  table = {}
  for chip in ("v4", "v5p"):
    for cores, shape in ((8, "2x2x1"), (16, "2x2x2"), (32, "2x2x4"), (64, "2x4x4"), (128, "4x4x4")):
      table[f"{chip}-{cores}"] = Slice(chip, f"{chip}:{shape}", (2, 2, 1))
  for chip in ("v5e", "v6e"):
    for chips, shape in ((1, "1x1"), (4, "2x2"), (8, "2x4"), (16, "4x4"), (32, "4x8"), (64, "8x8"), (256, "16x16")):
      per_host = (1, 1, 1) if chips == 1 else (2, 4, 1) if chips == 8 else (2, 2, 1)
      table[f"{chip}-{chips}"] = Slice(chip, f"{chip}:{shape}", per_host)
  table.update({f"v5litepod-{name.split('-')[1]}": s for name, s in list(table.items()) if s.chip == "v5e"})
  return table


SLICES = _slices()


class TpuRuntimeMissingError(errors.UserError, RuntimeError):
  """The TPU runtime that compiles for TPU topologies is not installed."""


def topology_devices(name: str) -> tuple[Slice, list[jax.Device]]:
  """The compile-only devices of the slice `name` (e.g. "v5e-8", "v4-32"), for every host of it."""
  if name not in SLICES:
    raise errors.ConfigError(f"Unknown TPU slice {name!r}; choose one of: {', '.join(SLICES)}.")
  tpu_slice = SLICES[name]
  from jax.experimental import topologies

  try:
    topology = topologies.get_topology_desc(
      tpu_slice.topology,
      platform="tpu",
      chip_config_name="megacore" if tpu_slice.megacore else "default",
      chips_per_host_bounds=tpu_slice.chips_per_host,
      num_slices=1,
      wrap=(False, False, False),
    )
  except RuntimeError as error:
    if "not installed" not in str(error):
      raise
    raise TpuRuntimeMissingError(
      f"Compiling for TPU needs the TPU runtime (libtpu) matching jax {jax.__version__}: "
      f'pip install -e ".[tpu]" ({error}).'
    ) from None
  return tpu_slice, list(topology.devices)


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4}
_DTYPE_BYTES |= {"s64": 8, "u64": 8, "f64": 8}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
# An HLO instruction `%name = <shape> <op>(...)`; asynchronous collectives appear as `<op>-start` / `<op>-done`.
_INSTRUCTION = re.compile(rf"=\s*(?P<shape>\S.*?)\s+(?P<op>{'|'.join(COLLECTIVES)})(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]")


def _shape_bytes(shape: str) -> int:
  total = 0
  for array in _ARRAY.finditer(shape):
    size = _DTYPE_BYTES.get(array["dtype"], 4)
    for dim in filter(None, array["dims"].split(",")):
      size *= int(dim)
    total += size
  return total


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """{kind: {"count", "bytes"}} of the collectives in optimised HLO text; bytes are each one's result size (for an
  asynchronous all-gather, whose start returns (operand, result), the result's)."""
  found: dict[str, dict[str, int]] = {}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.search(line)
    if not match:
      continue
    shape = match["shape"]
    if match["start"] and match["op"] == "all-gather" and shape.startswith("("):
      shape = shape.rsplit(",", 1)[-1]
    entry = found.setdefault(match["op"], {"count": 0, "bytes": 0})
    entry["count"] += 1
    entry["bytes"] += _shape_bytes(shape)
  return found


def _cost(compiled: Any) -> dict[str, float]:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  return {"flops": float(cost.get("flops", 0.0)), "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


def _memory(compiled: Any, chip: Chip) -> dict[str, float]:
  memory = compiled.memory_analysis()
  fields = {
    "arguments": memory.argument_size_in_bytes,
    "outputs": memory.output_size_in_bytes,
    "aliased": memory.alias_size_in_bytes,  # Donated arguments whose buffers the outputs reuse.
    "temporaries": memory.temp_size_in_bytes,
    "generated_code": memory.generated_code_size_in_bytes,
  }
  total = fields["arguments"] + fields["outputs"] - fields["aliased"] + fields["temporaries"] + fields["generated_code"]
  return fields | {"total": total, "hbm": chip.hbm_bytes, "hbm_fraction": round(total / chip.hbm_bytes, 4)}


def roofline(
  flops: float, bytes_accessed: float, per_device_batch: int, devices: int, hosts: int, chip: Chip
) -> dict[str, Any]:
  """The step time bound max(flops / peak, bytes / bandwidth) per device, and the images/s it allows: for the slice,
  and per host, which is the rate each host's input pipeline must deliver to keep up."""
  compute_s, memory_s = flops / chip.peak_bf16_flops, bytes_accessed / chip.hbm_bytes_per_s
  step_s = max(compute_s, memory_s)
  return {
    "compute_ms": round(compute_s * 1e3, 4),
    "memory_ms": round(memory_s * 1e3, 4),
    "bound": "compute" if compute_s >= memory_s else "memory",
    "step_ms": round(step_s * 1e3, 4),
    "images_per_s_per_chip": round(per_device_batch / step_s) if step_s else None,
    "images_per_s": round(per_device_batch * devices / step_s) if step_s else None,
    "images_per_s_per_host": round(per_device_batch * devices / hosts / step_s) if step_s else None,
  }


def _abstract_batch(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, mask_size: int) -> dict[str, Any]:
  batched = sharding.batch_sharded(mesh)
  size, batch = config.data.image_size, config.batch_size
  return {
    "image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32, sharding=batched),
    "mask": jax.ShapeDtypeStruct((batch, mask_size, mask_size), jnp.int32, sharding=batched),
    "weight": jax.ShapeDtypeStruct((batch,), jnp.float32, sharding=batched),
  }


def _check_batch(config: ml_collections.ConfigDict, devices: int, name: str) -> None:
  if config.batch_size <= 0 or config.batch_size % devices:
    choices = ", ".join(str(devices * 2**k) for k in range(3, 9))
    raise errors.ConfigError(
      f"config.batch_size={config.batch_size} is the global batch and must divide evenly over the {devices} devices "
      f"of {name}: choose a multiple of {devices}, e.g. {choices}."
    )


def _compile(lowered: Any) -> Any:
  """`lowered.compile()` past JAX's persistent cache (when one is set): a compile-only device's executable can be
  neither loaded from it nor run, only analysed."""
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    return lowered.compile()
  finally:
    jax.config.update("jax_enable_compilation_cache", enabled)


def programs(config: ml_collections.ConfigDict) -> dict[str, tuple[str, bool]]:
  """{program name: (kind, encoder trains)} of the config: a train step per phase, and the eval step."""
  phases = {train_state.encoder_trains(config, 0)}
  if config.model.freeze_encoder and config.unfreeze_at_step > 0:
    phases.add(True)
  names = {False: "train_frozen_encoder", True: "train"}
  return {names[trains]: ("train", trains) for trains in sorted(phases)} | {"eval": ("eval", False)}


def compile_for(
  config: ml_collections.ConfigDict, slice_name: str, only: Sequence[str] | None = None
) -> list[dict[str, Any]]:
  """Compiles the config's programs (or those named in `only`) for the slice and reports on each.

  Returns:
    One dict per program: the slice, batch and dtype, compile seconds, per-device memory, flops and bytes accessed
    per step, collectives, and the roofline bound.
  """
  trainer.validate(config)
  tpu_slice, devices = topology_devices(slice_name)
  _check_batch(config, len(devices), slice_name)
  chip = CHIPS[tpu_slice.chip]
  mesh = sharding.make_mesh(devices)
  model = train_state.create_model(config.model, sharding.platform(mesh))
  # The schedule's length enters the step as a constant, never a shape: a stand-in when the config derives it.
  num_train_steps = config.num_train_steps if config.num_train_steps > 0 else max(config.unfreeze_at_step, 0) + 1
  per_device_batch, hosts = config.batch_size // len(devices), len({device.process_index for device in devices})
  reports = []
  for name, (kind, trains) in programs(config).items():
    if only and name not in only:
      continue
    tx = train_state.make_optimizer(config, num_train_steps, train_encoder=trains)
    state = train_state.abstract_state(config, model, tx, mesh)
    if kind == "train":
      fn, batch = (
        trainer.make_train_fn(config, model, tx, mesh, train_encoder=trains),
        _abstract_batch(config, mesh, config.data.image_size),
      )
    else:
      mask_size = config.data.eval_mask_size or config.data.image_size
      fn, batch = evaluation.make_eval_fn(config, model, mesh), _abstract_batch(config, mesh, mask_size)
    start = time.perf_counter()
    compiled = _compile(fn.lower(state, batch))
    compile_s = time.perf_counter() - start
    cost = _cost(compiled)
    reports.append(
      {
        "program": name,
        "slice": slice_name,
        "topology": tpu_slice.topology,
        "chips": len(devices),
        "hosts": hosts,
        "global_batch": config.batch_size,
        "per_chip_batch": per_device_batch,
        "image_size": config.data.image_size,
        "dtype": config.model.dtype,
        "conv_impl": model.conv_impl,
        "compile_s": round(compile_s, 2),
        "memory": _memory(compiled, chip),
        **cost,
        "collectives": collectives(compiled.as_text()),
        "roofline": roofline(cost["flops"], cost["bytes_accessed"], per_device_batch, len(devices), hosts, chip),
        "chip_source": chip.source,
        "jax": jax.__version__,
        "libtpu": importlib.metadata.version("libtpu"),
      }
    )
  return reports


def _compile_at(config: ml_collections.ConfigDict, slice_name: str, program: str, per_chip_batch: int):
  """`program`'s report at a per-chip batch, or None when it does not fit the chip (the compiler ran out of HBM)."""
  trial = ml_collections.ConfigDict(config.to_dict())
  trial.batch_size = per_chip_batch * len(topology_devices(slice_name)[1])
  try:
    (report,) = compile_for(trial, slice_name, only=(program,))
  except jax.errors.JaxRuntimeError as error:
    if "RESOURCE_EXHAUSTED" in str(error):
      return None
    raise
  return report if report["memory"]["total"] <= report["memory"]["hbm"] else None


def max_batch(config: ml_collections.ConfigDict, slice_name: str, program: str) -> int:
  """The largest power-of-two per-chip batch whose `program` compiles within a chip's HBM (0 if not even 1 does).

  Memory grows linearly with the batch, so the compiles at 1 and 2 images per chip predict the answer and a few more
  confirm it."""
  reports: dict[int, dict[str, Any] | None] = {}

  def report(per_chip: int) -> dict[str, Any] | None:
    if per_chip not in reports:
      reports[per_chip] = _compile_at(config, slice_name, program, per_chip)
    return reports[per_chip]

  small, large = report(1), report(2)
  if small is None:
    return 0
  total, hbm = small["memory"]["total"], small["memory"]["hbm"]
  per_image = max(large["memory"]["total"] - total, 1) if large else hbm
  guess = 1 << max(0, int((hbm - total) // per_image + 1).bit_length() - 1)
  if report(guess):
    while report(guess * 2):
      guess *= 2
    return guess
  while not report(guess):
    guess //= 2
  return guess


def format_table(reports: Sequence[dict[str, Any]]) -> str:
  """The reports as a fixed-width table, one row per program."""
  header = (
    f"{'program':<22}{'slice':<10}{'chips':>6}{'hosts':>6}{'batch/chip':>11}{'dtype':>10}{'compile s':>10}"
    f"{'memory MB':>10}{'HBM %':>7}{'GFLOP':>8}{'GB read':>8}{'bound':>8}{'step ms':>9}{'img/s':>10}"
  )
  rows = [header, "-" * len(header)]
  for r in reports:
    line = r["roofline"]
    rows.append(
      f"{r['program']:<22}{r['slice']:<10}{r['chips']:>6}{r['hosts']:>6}{r['per_chip_batch']:>11}{r['dtype']:>10}"
      f"{r['compile_s']:>10.1f}{r['memory']['total'] / 1e6:>10.0f}{100 * r['memory']['hbm_fraction']:>7.1f}"
      f"{r['flops'] / 1e9:>8.1f}{r['bytes_accessed'] / 1e9:>8.2f}{line['bound']:>8}{line['step_ms']:>9.2f}"
      f"{line['images_per_s']:>10}"
    )
  return "\n".join(rows)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; options go as --flag=value.")
  cli.quiet_library_logs()
  config, slice_name = flags.FLAGS.config, flags.FLAGS.topology
  reports = compile_for(config, slice_name)
  for report in reports:
    print(json.dumps(report), flush=True)
  print(format_table(reports), file=sys.stderr)
  if flags.FLAGS.max_batch:
    # The last train phase is the largest: with `unfreeze_at_step`, the one that also trains the encoder.
    program = [name for name, (kind, _) in programs(config).items() if kind == "train"][-1]
    for dtype in ("float32", "bfloat16"):
      trial = ml_collections.ConfigDict(config.to_dict())
      trial.model.dtype = dtype
      line = {"max_batch_per_chip": max_batch(trial, slice_name, program), "program": program, "dtype": dtype}
      print(json.dumps(line | {"slice": slice_name, "image_size": config.data.image_size}), flush=True)


def _define_flags() -> None:
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pets.py.", lock_config=True)
  flags.DEFINE_string("topology", None, f"The TPU slice to compile for: {', '.join(SLICES)}.")
  flags.DEFINE_bool(
    "max_batch", False, "Also find the largest power-of-two per-chip batch that fits HBM, for float32 and bfloat16."
  )
  flags.mark_flags_as_required(["config", "topology"])


if __name__ == "__main__":
  cli.run(main, name="aot", define_flags=_define_flags)
