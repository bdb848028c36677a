"""The trainer's programs compiled ahead of time for a TPU slice, on this CPU-only machine, with the TPU runtime."""

import json
import math
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_testlib import REPO_ROOT, tiny_config

pytest.importorskip("libtpu", reason='the TPU runtime is not installed (pip install -e ".[tpu]")')

from unet_jax import aot, errors, train_state  # noqa: E402
from unet_jax.models import cpu_ops  # noqa: E402

SLICE = "v5e-4"  # 4 chips, one host: the smallest multi-chip slice, so the train step has a gradient all-reduce.


@pytest.fixture(scope="module")
def config():
  # Both phases (frozen encoder, then trained from step 4), 2 images per chip.
  return tiny_config("", {"batch_size": 8})


@pytest.fixture(scope="module")
def reports(config):
  return {report["program"]: report for report in aot.compile_for(config, SLICE)}


def _param_bytes(tree) -> int:
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def _forward_flops(model: nn.Module, size: int) -> dict[str, float]:
  """{"encoder", "decoder"}: 2 x the multiply-adds of each conv for one image, from its kernel and output shapes. A
  stride-2 transpose conv multiplies each input pixel (a quarter of its output pixels) by the whole kernel."""
  model = model.clone(conv_impl="xla")
  images = jnp.zeros((1, size, size, 3))
  transposed = set()

  def is_conv(module: nn.Module, _) -> bool:
    if isinstance(module, cpu_ops.ConvTranspose3x3Stride2):
      transposed.add(module.path)
    return isinstance(module, nn.Conv | cpu_ops.ConvTranspose3x3Stride2)

  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, capture_intermediates=is_conv), images)
  flops = {"encoder": 0.0, "decoder": 0.0}
  for path, output in jax.tree_util.tree_flatten_with_path(variables["intermediates"])[0]:
    names = [key.key for key in path[:-2]]
    kernel = variables["params"]
    for name in names:
      kernel = kernel[name]
    out_pixels = math.prod(output.shape[1:3]) / (4 if tuple(names) in transposed else 1)
    part = "encoder" if names[0] == "encoder" else "decoder"
    flops[part] += 2 * out_pixels * math.prod(kernel["kernel"].shape)
  return flops


def test_auto_conv_impl_follows_the_slice_not_the_host(reports):
  assert jax.default_backend() == "cpu"
  assert {report["conv_impl"] for report in reports.values()} == {"xla"}


def test_a_program_per_phase_and_the_eval_step(reports):
  assert set(reports) == {"train_frozen_encoder", "train", "eval"}
  for report in reports.values():
    assert (report["slice"], report["topology"], report["chips"], report["hosts"]) == (SLICE, "v5e:2x2", 4, 1)
    assert (report["global_batch"], report["per_chip_batch"]) == (8, 2)
    assert report["compile_s"] > 0


def test_memory_holds_the_state_and_fits_the_chip(reports, config):
  model = train_state.create_model(config.model)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  param_bytes = _param_bytes(variables["params"])
  for report in reports.values():
    memory = report["memory"]
    assert memory["arguments"] > param_bytes
    assert memory["total"] > memory["arguments"] - memory["aliased"]
    assert memory["hbm"] == aot.CHIPS["v5e"].hbm_bytes and 0 < memory["hbm_fraction"] < 1
  # The train step's state is donated: its outputs reuse the argument buffers.
  assert reports["train"]["memory"]["aliased"] > param_bytes


def test_flops_agree_with_the_models_analytic_count(reports, config):
  flops = _forward_flops(train_state.create_model(config.model), config.data.image_size)
  assert flops["encoder"] > 0 and flops["decoder"] > 0
  per_chip = reports["eval"]["per_chip_batch"]
  expected = {
    "eval": flops["encoder"] + flops["decoder"],
    # No backward pass through a frozen encoder; forward, input and kernel gradients through the decoder.
    "train_frozen_encoder": flops["encoder"] + 3 * flops["decoder"],
    "train": 3 * (flops["encoder"] + flops["decoder"]),
  }
  for name, per_image in expected.items():
    ratio = reports[name]["flops"] / (per_image * per_chip)
    assert 0.5 < ratio < 2, (name, ratio)


def test_gradient_all_reduce_moves_the_trainable_parameters(reports, config):
  model = train_state.create_model(config.model)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
  decoder_bytes = _param_bytes({k: v for k, v in params.items() if k != train_state.ENCODER})
  for name, trainable in (("train_frozen_encoder", decoder_bytes), ("train", _param_bytes(params))):
    reduced = reports[name]["collectives"]["all-reduce"]["bytes"]
    assert trainable <= reduced < 1.1 * trainable + 4096, (name, reduced, trainable)
  # Eval sums its metrics (loss, confusion matrix) over the chips, and nothing of the parameters' size.
  assert reports["eval"]["collectives"].get("all-reduce", {"bytes": 0})["bytes"] < 1024


def test_roofline_is_the_slower_of_compute_and_memory(reports):
  chip = aot.CHIPS["v5e"]
  for report in reports.values():
    line = report["roofline"]
    step_s = max(report["flops"] / chip.peak_bf16_flops, report["bytes_accessed"] / chip.hbm_bytes_per_s)
    assert line["step_ms"] == pytest.approx(step_s * 1e3, rel=1e-3)
    assert line["images_per_s"] == pytest.approx(4 * report["per_chip_batch"] / step_s, rel=1e-3)
    assert line["images_per_s_per_host"] == line["images_per_s"]  # One host.
    assert line["bound"] in ("compute", "memory")


def test_bfloat16_keeps_float32_parameters_and_halves_the_gradient_all_reduce(reports):
  bf16 = tiny_config("", {"batch_size": 8, "model.dtype": "bfloat16"})
  (report,) = aot.compile_for(bf16, SLICE, only=("train_frozen_encoder",))
  float32 = reports["train_frozen_encoder"]
  assert report["dtype"] == "bfloat16"
  # The state (parameters, optimizer moments) is the same float32 arguments; the gradients cross the chips in bf16.
  assert report["memory"]["arguments"] == float32["memory"]["arguments"]
  ratio = report["collectives"]["all-reduce"]["bytes"] / float32["collectives"]["all-reduce"]["bytes"]
  assert 0.45 < ratio < 0.55, ratio


def test_max_batch_is_the_largest_power_of_two_that_fits(config, monkeypatch):
  # A chip with little HBM keeps the search to a few small compiles; each is recorded.
  monkeypatch.setitem(aot.CHIPS, "v5e", aot.dataclasses.replace(aot.CHIPS["v5e"], hbm_bytes=17 << 20))
  fits, compile_at = {}, aot._compile_at

  def recorded(*args):
    report = compile_at(*args)
    fits[args[-1]] = report is not None
    return report

  monkeypatch.setattr(aot, "_compile_at", recorded)
  largest = aot.max_batch(tiny_config("", {"unfreeze_at_step": -1}), SLICE, "train_frozen_encoder")
  assert largest >= 1 and largest & (largest - 1) == 0
  assert fits[largest] and not fits[2 * largest], fits


@pytest.mark.parametrize(
  "name, chips, hosts, kind",
  [
    ("v5e-8", 8, 1, "TPU v5 lite"),
    ("v5litepod-32", 32, 8, "TPU v5 lite"),
    ("v4-32", 16, 4, "TPU v4"),
    ("v5p-8", 4, 1, "TPU v5"),
    ("v6e-8", 8, 1, "TPU v6 lite"),
  ],
)
def test_slice_names_give_their_chips_and_hosts(name, chips, hosts, kind):
  # v4 and v5p names count TensorCores, two per chip, which JAX drives as one device; v5e and v6e names count chips.
  _, devices = aot.topology_devices(name)
  assert len(devices) == chips and len({device.process_index for device in devices}) == hosts
  assert {device.device_kind for device in devices} == {kind}


def test_unknown_slice_and_uneven_batch_are_clear_errors(config):
  with pytest.raises(errors.ConfigError, match="Unknown TPU slice 'v5e-3'; choose one of: .*v4-32, .*v5e-8, "):
    aot.compile_for(config, "v5e-3")
  with pytest.raises(errors.ConfigError, match="batch_size=6 .* 4 devices of v5e-4"):
    aot.compile_for(tiny_config("", {"batch_size": 6}), SLICE)


def test_the_command_prints_a_json_line_per_program_and_a_table(tmp_path):
  command = [sys.executable, "-m", "unet_jax.aot", "--config", "configs/synthetic.py", f"--topology={SLICE}"]
  command += ["--config.data.image_size=64", "--config.model.alpha=0.35", "--config.batch_size=8"]
  command += ["--config.model.decoder_filters=(32,16,16,8)", "--config.model.pretrained="]
  result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  assert [line["program"] for line in lines][-1] == "eval"
  assert all(np.isfinite(line["roofline"]["images_per_s"]) for line in lines)
  assert "img/s" in result.stderr and SLICE in result.stderr

  unknown = subprocess.run(command[:5] + ["--topology=v9-8"], cwd=REPO_ROOT, capture_output=True, text=True)
  assert unknown.returncode == 1 and "aot: error: Unknown TPU slice 'v9-8'" in unknown.stderr
