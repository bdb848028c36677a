"""What a machine with an NVIDIA GPU gives the product, in one short run: `bash bench/device_check.sh`.

JSON lines: the GPU's logits against the CPU backend's for the same model and images (float32: the same weights must
give the same masks), then `bench/train_step.py`'s figures: the GPU's matrix-product GFLOP/s, and the trainer's step
(frozen and trainable encoder; float32 and bfloat16; batch 64 and 256; 128 and 224 px: images/s, XLA's GFLOP per step
and the rate it runs at, compile time, peak GPU memory), then a
short configs/pets_sample.py:local training with its test figures beside the tutorial recipe's expected ones.

`--dry_run` does the same on this CPU at toy sizes (the parity compares the CPU formulations with lax.conv), so the
script is tested where no GPU is.
"""

import json
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
from absl import app, flags

from unet_jax import default_config, train_state

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PETS_SAMPLE_EXPECTED = {"mean_iou": 0.70, "pixel_accuracy": 0.88}  # configs/pets_sample.py's docstring, seeds 0-2.

_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Run on the CPU at toy sizes: checks the script, measures nothing.")
_OUT = flags.DEFINE_string("out", "/tmp/device_check", "Where the short training writes its workdir.")


def emit(**fields) -> None:
  print(json.dumps(fields), flush=True)


def parity(dry_run: bool) -> None:
  """Logits of one model on the accelerator and on the CPU backend (dry run: CPU products against lax.conv)."""
  config = default_config.get_config()
  config.model.pretrained = ""
  size = 64 if dry_run else 128
  images = np.random.default_rng(0).uniform(-1, 1, (4, size, size, 3)).astype(np.float32)
  cpu = jax.devices("cpu")[0]
  reference_model = train_state.create_model(config.model, "cpu")
  accelerator = cpu if dry_run else jax.devices()[0]
  model = train_state.create_model(config.model, accelerator.platform)
  if dry_run:
    model = model.clone(conv_impl="xla")  # The GPU's formulation, on the CPU.
  with jax.default_device(cpu):
    variables = jax.jit(reference_model.init)(jax.random.key(0), images[:1])
    reference = np.asarray(jax.jit(reference_model.apply)(variables, images))
  on_device = jax.device_put(variables, accelerator)
  logits = np.asarray(jax.jit(model.apply)(on_device, jax.device_put(images, accelerator)))
  emit(
    figure="parity",
    device=accelerator.device_kind,
    conv_impls=[reference_model.conv_impl, model.conv_impl],
    max_abs_logit_diff=float(np.abs(logits - reference).max()),
    logit_scale=float(np.abs(reference).max()),
    mask_agreement=float((logits.argmax(-1) == reference.argmax(-1)).mean()),
  )


def step_figures(dry_run: bool) -> None:
  """bench/train_step.py on the JAX side only, one run per dtype and image size."""
  sizes, batches, modes = ((64,), "8", "frozen") if dry_run else ((128, 224), "64,256", "frozen,trainable")
  for dtype in ("float32", "bfloat16"):
    for size in sizes:
      command = [
        sys.executable,
        str(REPO_ROOT / "bench" / "train_step.py"),
        "--frameworks=jax",
        "--input_pipeline=false",
      ]
      command += [f"--dtype={dtype}", f"--image_size={size}", f"--batch_sizes={batches}", f"--modes={modes}"]
      command += ["--steps=2"] if dry_run else ["--steps=10"]
      command += [f"--matmul_peak={dtype == 'float32' and size == sizes[0]}"]  # The device's product rates, once.
      subprocess.run(command, check=True)


def short_training(dry_run: bool, out: pathlib.Path) -> None:
  """configs/pets_sample.py:local as a user runs it; its last eval beside the figures the config expects."""
  workdir = out / f"pets_sample-{int(time.time())}"
  command = [sys.executable, "-m", "unet_jax.train", "--config", "configs/pets_sample.py:local", f"--workdir={workdir}"]
  if dry_run:
    command += ["--config.num_train_steps=2", "--config.data.image_size=64", "--config.model.pretrained="]
  start = time.perf_counter()
  subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True)
  seconds = time.perf_counter() - start
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  final = [line for line in lines if line.get("split") == "eval"][-1]
  emit(
    figure="pets_sample",
    seconds=round(seconds, 1),
    **{name: final.get(name) for name in PETS_SAMPLE_EXPECTED},
    expected=PETS_SAMPLE_EXPECTED,
  )


def main(argv) -> None:
  del argv
  if not _DRY_RUN.value and jax.default_backend() != "gpu":
    raise SystemExit(f"No GPU: JAX's backend is {jax.default_backend()!r}; install jax[cuda12], or pass --dry_run.")
  emit(
    figure="devices",
    backend=jax.default_backend(),
    devices=[d.device_kind for d in jax.devices()],
    jax=jax.__version__,
    date=time.strftime("%Y-%m-%d"),
  )
  parity(_DRY_RUN.value)
  step_figures(_DRY_RUN.value)
  short_training(_DRY_RUN.value, pathlib.Path(_OUT.value))


if __name__ == "__main__":
  app.run(main)
