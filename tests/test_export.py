"""`python -m unet_jax.export`: every format is written, run back in its own runtime against the JAX model, and its
figures recorded beside it; the jax2tf SavedModel gives the JAX predictor's masks for uint8 images of any size."""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from inference_testlib import trained  # noqa: F401  (a fixture)
from train_testlib import REPO_ROOT, synthetic_data_dir  # noqa: F401  (a fixture)

from unet_jax import data, errors, export, onnx_export, predict

_MISSING_ONNX = [name for name in ("jax2onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
needs_onnx = pytest.mark.skipif(
  bool(_MISSING_ONNX),
  reason=f"{', '.join(_MISSING_ONNX)} not installed: the export extra, `pip install -e '.[export]'`",
)
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT)}


def test_saved_model_gives_the_predictors_masks(trained, tmp_path):  # noqa: F811
  saved_model = tmp_path / "saved_model"
  predictor = predict.Predictor.from_workdir(str(trained.workdir))
  export.export_saved_model(predictor, str(saved_model))  # What the CLI runs, for its default platforms.

  serve = tf.saved_model.load(str(saved_model)).signatures[export.SIGNATURE_KEY]
  assert serve.structured_input_signature[1]["images"] == tf.TensorSpec([None, None, None, 3], tf.uint8, "images")
  rng = np.random.default_rng(0)
  classes_seen = set()
  # Sizes around the 64 px the model was trained at. One batch size: TF compiles the model once per batch size.
  for shape in [(2, 37, 90, 3), (2, 130, 45, 3)]:
    images = rng.integers(0, 256, shape, np.uint8)
    masks = serve(images=tf.constant(images))["masks"].numpy()
    want = np.stack([predictor(image) for image in images])
    assert masks.dtype == np.int32
    np.testing.assert_array_equal(masks, want)
    classes_seen |= set(np.unique(want).tolist())
  assert len(classes_seen) > 1, "a constant mask would make this comparison meaningless"


def test_keep_size_predictor_is_refused(trained):  # noqa: F811
  predictor = predict.Predictor.from_workdir(str(trained.workdir), keep_size=True)
  with pytest.raises(ValueError, match="keep_size=False"):
    export.to_tf_module(predictor)


def test_the_command_writes_a_checked_saved_model_by_default(trained, tmp_path):  # noqa: F811
  """The command as README shows it (no --format): today's SavedModel, plus its figures in PATH.json."""
  output = tmp_path / "exported"
  command = [sys.executable, "-m", "unet_jax.export", f"--workdir={trained.workdir}", f"--output={output}/"]
  result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (output / "saved_model.pb").is_file()
  record = json.loads((tmp_path / "exported.json").read_text())
  assert record["format"] == "savedmodel" and record["quantize"] is None and record["step"] == 4
  assert record["bytes"] == sum(path.stat().st_size for path in output.rglob("*") if path.is_file())
  assert record["mask_agreement"] >= export.FLOAT32_MASK_AGREEMENT and record["check_images"] == 8
  assert f"Wrote {output}" in result.stdout and f"{record['mask_agreement']:.4%}" in result.stdout


def test_an_unknown_format_lists_the_choices(tmp_path):
  command = [sys.executable, "-m", "unet_jax.export", "--workdir=w", f"--output={tmp_path}/m", "--format=pt"]
  result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and "<savedmodel|keras|tflite|onnx>" in result.stderr, result.stderr[-2000:]
  with pytest.raises(
    errors.ConfigError, match=r"format='pt' is not one of \('savedmodel', 'keras', 'tflite', 'onnx'\)"
  ):
    export.export_run("w", str(tmp_path / "m"), "pt")


def test_quantize_is_for_tflite_only(tmp_path):
  with pytest.raises(errors.ConfigError, match="quantize='int8' applies to the tflite format only, not 'onnx'"):
    export.export_run("w", str(tmp_path / "m.onnx"), "onnx", quantize="int8")


def test_an_existing_output_is_refused_unless_overwritten(trained, tmp_path):  # noqa: F811
  output = tmp_path / "model.onnx"
  output.write_text("a user's file")
  with pytest.raises(errors.ConfigError, match=f"{output} exists"):
    export.export_run(str(trained.workdir), str(output), "onnx")
  assert output.read_text() == "a user's file"
  output.unlink()
  export.result_path(str(output)).write_text("{}")  # A stale record is not replaced silently either.
  with pytest.raises(errors.ConfigError, match="model.onnx.json exists"):
    export.export_run(str(trained.workdir), str(output), "onnx")


def test_a_missing_optional_dependency_names_the_extra(trained, tmp_path, monkeypatch):  # noqa: F811
  monkeypatch.setitem(sys.modules, "jax2onnx", None)  # `import jax2onnx` now raises ImportError.
  with pytest.raises(onnx_export.MissingDependencyError, match=r"pip install -e \"\.\[export\]\""):
    export.export_run(str(trained.workdir), str(tmp_path / "model.onnx"), "onnx")


def test_a_file_that_disagrees_with_jax_fails_the_export(trained, tmp_path, monkeypatch):  # noqa: F811
  """A Keras model whose last bias favours class 0 by far: every mask is 0, and the export says so with figures."""
  from unet_jax import keras_export

  to_keras = keras_export.to_keras

  def biased(predictor):
    params = predictor.variables["params"]
    last = {**params["last"], "bias": params["last"]["bias"].at[0].add(1e3)}
    return to_keras(
      dataclasses.replace(predictor, variables={**predictor.variables, "params": {**params, "last": last}})
    )

  monkeypatch.setattr(keras_export, "to_keras", biased)
  output = tmp_path / "model.keras"
  with pytest.raises(errors.UserError, match=r"disagrees with the JAX model on 8 eval images: \d+\.\d+% of the mask"):
    export.export_run(str(trained.workdir), str(output), "keras")
  assert not export.result_path(str(output)).exists()


@needs_onnx
def test_a_disagreeing_onnx_file_fails_the_export(trained, tmp_path, monkeypatch):  # noqa: F811
  to_onnx = onnx_export.to_onnx

  def biased(predictor, *args, **kwargs):  # Every logit moves by 100x the tolerance.
    params = predictor.variables["params"]
    last = {**params["last"], "bias": params["last"]["bias"] + 1e-2}
    return to_onnx(
      dataclasses.replace(predictor, variables={**predictor.variables, "params": {**params, "last": last}})
    )

  monkeypatch.setattr(onnx_export, "to_onnx", biased)
  output = tmp_path / "model.onnx"
  with pytest.raises(errors.UserError, match="ONNX model disagrees with the JAX model on 3 eval images"):
    export.export_run(str(trained.workdir), str(output), "onnx", num_check_images=3)
  assert not export.result_path(str(output)).exists()


@needs_onnx
def test_onnx_export_records_its_agreement(trained, tmp_path):  # noqa: F811
  output = tmp_path / "model.onnx"
  record = export.export_run(str(trained.workdir), str(output), "onnx", num_check_images=3)
  assert json.loads(export.result_path(str(output)).read_text()) == record
  assert record["format"] == "onnx" and record["bytes"] == output.stat().st_size and record["check_images"] == 3
  assert record["mask_agreement"] == 1.0 and record["max_abs_logits_diff"] <= onnx_export.LOGITS_ATOL
  images = export.check_images(trained.config, 3)
  predictor = predict.Predictor.from_workdir(str(trained.workdir))
  masks = onnx_export.check_with_onnxruntime(output, images.astype(np.float32))["masks"]
  np.testing.assert_array_equal(masks, np.stack(list(predictor.predict(images))))  # The run has no flips or scales.


def test_check_images_are_the_eval_splits_first(trained):  # noqa: F811
  images = export.check_images(trained.config, 3)
  size = trained.config.data.image_size
  assert images.shape == (3, size, size, 3) and images.dtype == np.uint8
  batch = next(data.eval_batches(trained.config.data, global_batch_size=3, process_index=0, process_count=1))
  normalized = data.normalize_image(images.astype(np.float32), trained.config.data.normalization)
  np.testing.assert_allclose(normalized, batch["image"], atol=0.5 / 127.5 + 1e-6)  # uint8 rounding.
  with pytest.raises(errors.ConfigError, match="check_images=0 must be at least 1"):
    export.check_images(trained.config, 0)


@pytest.mark.parametrize(
  "format_, quantize, name",
  [("keras", "none", "model.keras"), ("tflite", "int8", "model.tflite")],  # keras_export's tests cover float16.
)
def test_keras_and_tflite_exports_record_their_agreement(trained, tmp_path, format_, quantize, name):  # noqa: F811
  from unet_jax import keras_export

  output = tmp_path / name
  record = export.export_run(
    str(trained.workdir), str(output), format_, quantize=quantize, calibration_steps=2, num_check_images=3
  )
  assert json.loads(export.result_path(str(output)).read_text()) == record
  assert record["format"] == format_ and record["bytes"] == output.stat().st_size and record["check_images"] == 3
  assert record["quantize"] == (quantize if format_ == "tflite" else None)
  if format_ == "keras":
    assert record["mask_agreement"] >= export.FLOAT32_MASK_AGREEMENT
    assert record["max_abs_logits_diff"] <= keras_export.KERAS_LOGITS_ATOL
  else:
    assert record["mask_agreement"] >= keras_export.TFLITE_MASK_AGREEMENT[quantize]
    assert (record["max_abs_logits_diff"] is None) == (quantize == "int8")  # int8 outputs the masks alone.
    images = export.check_images(trained.config, 3)
    want = np.stack(list(predict.Predictor.from_workdir(str(trained.workdir)).predict(images)))  # No flips or scales.
    assert float((keras_export.run_tflite(output, images)["masks"] == want).mean()) == record["mask_agreement"]
