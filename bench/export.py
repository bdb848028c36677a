"""Every export format of one pets_sample run: test mean IoU and pixel accuracy beside the JAX model's, file size, and
single-image latency on this CPU. One JSON line per format.

  python bench/export.py                               # trains configs/pets_sample.py:local first (minutes)
  python bench/export.py --workdir runs/pets_sample    # a run already trained by that config

Each file is written by `unet_jax.export.export_run`, the command's own code (which checks it against JAX), then read
back in its own runtime (TensorFlow, Keras, the LiteRT interpreter, onnxruntime), which predicts every test image of
the run's eval split at the model's size. Every format, JAX included, gets the same uint8 images (the eval stream's
bilinear resize, rounded), and the metrics come from `unet_jax.metrics` against the eval stream's masks. Latency: one
[1, S, S, 3] image, the median of `--latency_runs` calls after `--warmup` calls, each runtime with its default
threads; the JAX figure is the model without test-time augmentation, as in the files.
"""

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from absl import app, flags

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A run of configs/pets_sample.py; default: train one into a temporary folder.")
flags.DEFINE_string("config", "configs/pets_sample.py:local", "What to train when no --workdir is given.")
flags.DEFINE_list(
  "formats",
  ["jax", "savedmodel", "keras", "tflite:none", "tflite:float16", "tflite:int8", "onnx"],
  "What to measure: jax, savedmodel, keras, tflite:QUANTIZE, onnx.",
)
flags.DEFINE_integer("latency_runs", 200, "Timed single-image calls per format (the median is reported).")
flags.DEFINE_integer("warmup", 20, "Untimed calls before them.")
flags.DEFINE_integer("calibration_steps", 8, "tflite int8: training-stream batches that calibrate it.")

VERSIONS = ("jax", "flax", "tensorflow", "keras", "jax2onnx", "onnxruntime", "ai-edge-litert")


def machine() -> dict[str, Any]:
  fields = {}
  for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
    key, _, value = (part.strip() for part in line.partition(":"))
    if key in ("model name", "cpu family", "model") and key not in fields:
      fields[key] = value
  versions = {}
  for name in VERSIONS:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return {
    "date": datetime.date.today().isoformat(),
    "cpu": f"{fields.get('model name')} (family {fields.get('cpu family')} model {fields.get('model')})",
    "cpus": os.cpu_count(),
    "python": platform.python_version(),
    "versions": versions,
  }


def latency_ms(call: Callable[[], Any], warmup: int, runs: int) -> dict[str, float]:
  for _ in range(warmup):
    call()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    call()
    times.append((time.perf_counter() - start) * 1e3)
  times.sort()
  return {"latency_ms_median": statistics.median(times), "latency_ms_p90": times[int(0.9 * (len(times) - 1))]}


def test_set(config) -> tuple[Any, Any]:
  """uint8 images [N, S, S, 3] and int32 masks [N, S, S] of the whole eval split, as `export.check_images` reads it."""
  import numpy as np

  from unet_jax import data, export

  count = data.num_examples(config.data, config.data.eval_split)
  images = export.check_images(config, count)
  masks = []
  for batch in data.eval_batches(config.data, global_batch_size=64, process_index=0, process_count=1):
    masks.extend(batch["mask"][batch["weight"] > 0])
  return images, np.stack(masks)


def predictors(workdir: str, formats: list[str], directory: pathlib.Path, images) -> dict[str, Any]:
  """format -> (batch predict: uint8 images -> masks, one-image call, export record)."""
  import functools

  import jax
  import numpy as np
  import tensorflow as tf

  from unet_jax import export, predict

  one = images[:1]
  result = {}
  for spec in formats:
    name, _, quantize = spec.partition(":")
    if name == "jax":
      predictor = predict.Predictor.from_workdir(workdir)
      logits = jax.jit(functools.partial(predict.model_logits, predictor.model, predictor.normalization, False, (1.0,)))
      run = lambda x, logits=logits, v=predictor.variables: np.asarray(logits(v, x.astype(np.float32)).argmax(-1))
      result[spec] = (run, functools.partial(run, one), {"bytes": None})
      continue
    suffix = {"savedmodel": "", "keras": ".keras", "tflite": ".tflite", "onnx": ".onnx"}[name]
    output = directory / f"{name}{'_' + quantize if quantize else ''}{suffix}"
    record = export.export_run(
      workdir, str(output), name, quantize=quantize or "none", calibration_steps=FLAGS.calibration_steps
    )
    if name == "savedmodel":
      serve = tf.saved_model.load(str(output)).signatures[export.SIGNATURE_KEY]
      run = lambda x, serve=serve: serve(images=tf.constant(x))["masks"].numpy()
    elif name == "keras":
      import keras

      model = tf.function(keras.saving.load_model(output))
      run = lambda x, model=model: model(x.astype(np.float32)).numpy().argmax(-1)
    elif name == "tflite":
      run = tflite_runner(output)
    else:
      import onnxruntime

      session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
      run = lambda x, session=session: session.run(["masks"], {"images": x.astype(np.float32)})[0]
    result[spec] = (run, functools.partial(run, one), record)
  return result


def tflite_runner(path: pathlib.Path) -> Callable[[Any], Any]:
  """uint8 images -> masks through LiteRT's interpreter (TensorFlow's where ai_edge_litert is absent), one at a time."""
  import numpy as np

  try:
    from ai_edge_litert.interpreter import Interpreter
  except ImportError:
    import tensorflow as tf

    Interpreter = tf.lite.Interpreter
  runner = Interpreter(model_path=str(path)).get_signature_runner()
  dtype = runner.get_input_details()["images"]["dtype"]
  return lambda x: np.concatenate([runner(images=image[None].astype(dtype))["masks"] for image in x])


def train(config: str, workdir: pathlib.Path) -> None:
  command = [sys.executable, "-m", "unet_jax.train", f"--config={config}", f"--workdir={workdir}"]
  start = time.monotonic()
  subprocess.run(command, cwd=REPO_ROOT, check=True)
  print(f"trained {config} in {(time.monotonic() - start) / 60:.1f} min", file=sys.stderr)


def main(argv: list[str]) -> None:
  del argv
  directory = pathlib.Path(tempfile.mkdtemp(prefix="bench_export_"))
  workdir = FLAGS.workdir or str(directory / "run")
  if not FLAGS.workdir:
    train(FLAGS.config, pathlib.Path(workdir))

  import jax
  import numpy as np

  from unet_jax import checkpointing, metrics

  config = checkpointing.load_config(workdir)
  images, masks = test_set(config)
  common = {**machine(), "workdir": workdir, "test_images": len(images), "image_size": config.data.image_size}
  jax_masks = None
  for spec, (run, run_one, record) in predictors(workdir, FLAGS.formats, directory, images).items():
    predicted = np.concatenate([run(images[i : i + 16]) for i in range(0, len(images), 16)])
    jax_masks = predicted if spec == "jax" else jax_masks
    confusion = jax.device_get(metrics.confusion_matrix(masks, predicted, config.model.num_classes))
    scores = metrics.segmentation_metrics(confusion)
    figures = {
      "format": spec,
      "mean_iou": scores["mean_iou"],
      "pixel_accuracy": scores["pixel_accuracy"],
      "bytes": record["bytes"],
      "mask_agreement_with_jax": None if jax_masks is None else float((predicted == jax_masks).mean()),
      "export_check_agreement": record.get("mask_agreement"),
      **latency_ms(run_one, FLAGS.warmup, FLAGS.latency_runs),
      "load_average": os.getloadavg()[0],
    }
    print(json.dumps({**figures, **common}), flush=True)


if __name__ == "__main__":
  app.run(main)
