"""The Keras and LiteRT exports: the tutorial's Keras model computes the JAX model's logits, its weights convert back
exactly, it saves and loads, and its TFLite forms give the JAX model's masks within their tolerances."""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from inference_testlib import trained  # noqa: F401  (a fixture)
from train_testlib import synthetic_data_dir  # noqa: F401  (a fixture)

from unet_jax import data, errors, keras_export, predict, pretrained
from unet_jax.models.unet import UNet

_jitted_logits = jax.jit(predict.model_logits, static_argnums=(0, 1, 2, 3))


def jax_logits(predictor: predict.Predictor, images: np.ndarray) -> np.ndarray:
  return np.asarray(
    _jitted_logits(predictor.model, predictor.normalization, False, (1.0,), predictor.variables, images)
  )


def random_predictor(alpha: float, upsample: str, size: int, normalization: str, seed: int) -> predict.Predictor:
  """An untrained U-Net with every variable drawn at random (BatchNorm statistics and affine parameters too, so that
  swapping mean and variance, or scale and bias, would show). lax.conv: it compiles fastest."""
  model = UNet(
    num_classes=4, alpha=alpha, decoder_filters=(16, 8, 8, 8), upsample=upsample, dropout_rate=0.5, conv_impl="xla"
  )
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  rng = np.random.default_rng(seed)
  draws = {"mean": lambda s: rng.normal(0, 0.2, s), "var": lambda s: rng.uniform(0.5, 1.5, s)}
  draws |= {"scale": lambda s: rng.uniform(0.8, 1.2, s), "bias": lambda s: rng.normal(0, 0.1, s)}
  draws["kernel"] = lambda s: rng.normal(0, 1 / np.sqrt(np.prod(s[:-1])), s)
  variables = jax.tree_util.tree_map_with_path(
    lambda path, x: jnp.asarray(draws[path[-1].key](x.shape), jnp.float32), shapes
  )
  return predict.Predictor(model, variables, size, normalization, 4)


def images_for(size: int, count: int = 2, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def trained_predictor(trained) -> predict.Predictor:  # noqa: F811
  return predict.Predictor.from_workdir(str(trained.workdir))


@pytest.fixture(scope="module")
def trained_keras(trained_predictor) -> keras.Model:
  return keras_export.to_keras(trained_predictor)


@pytest.fixture(scope="module")
def test_images(trained, trained_predictor) -> np.ndarray:  # noqa: F811
  """Eval images of the synthetic data: the trained model's masks on them hold every class."""
  batch = next(data.eval_batches(trained.config.data, global_batch_size=8))
  return data.denormalize_to_uint8(batch["image"], trained_predictor.normalization)


def assert_inverse_exact(predictor: predict.Predictor, keras_model: keras.Model) -> None:
  back = pretrained.unet_variables_from_keras(keras_model)
  assert jax.tree.structure(back) == jax.tree.structure(predictor.variables)
  jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(predictor.variables))


def assert_logits_match(predictor: predict.Predictor, keras_model: keras.Model, images: np.ndarray) -> None:
  expected = jax_logits(predictor, images.astype(np.float32))
  actual = np.asarray(keras_model(images.astype(np.float32), training=False))
  assert actual.dtype == np.float32 and actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, rtol=0, atol=keras_export.KERAS_LOGITS_ATOL)


def test_trained_model_converts_exactly_and_gives_the_jax_logits(trained_predictor, trained_keras, test_images):
  assert trained_keras.input_shape == (None, 64, 64, 3)
  assert_inverse_exact(trained_predictor, trained_keras)
  assert_logits_match(trained_predictor, trained_keras, test_images)


@pytest.mark.parametrize(
  "alpha, upsample, size, normalization",
  [
    (0.35, "nearest", 64, "zero_to_one"),
    (1.0, "transpose", 32, "minus_one_to_one"),
    (1.0, "nearest", 32, "zero_to_one"),
  ],
)
def test_alphas_and_decoders_convert_exactly_and_give_the_jax_logits(alpha, upsample, size, normalization):
  predictor = random_predictor(alpha, upsample, size, normalization, seed=int(alpha * 100) + len(upsample))
  keras_model = keras_export.to_keras(predictor)
  assert_inverse_exact(predictor, keras_model)
  assert_logits_match(predictor, keras_model, images_for(size))


def test_alpha_keras_lacks_is_refused():
  predictor = predict.Predictor(UNet(alpha=0.6), {}, 32, "minus_one_to_one", 3)
  with pytest.raises(errors.ConfigError, match=r"alpha=0\.6"):
    keras_export.to_keras(predictor)


@pytest.mark.parametrize("suffix", keras_export.KERAS_SUFFIXES)
def test_saved_model_loads_back_with_the_same_logits(trained_keras, test_images, tmp_path, suffix):
  path = tmp_path / f"unet{suffix}"
  keras_export.save_keras(trained_keras, path)
  loaded = keras.models.load_model(path)
  images = test_images[:2].astype(np.float32)
  np.testing.assert_array_equal(np.asarray(loaded(images, training=False)), np.asarray(trained_keras(images)))


def test_save_refuses_other_suffixes_and_existing_paths(trained_keras, tmp_path):
  with pytest.raises(errors.ConfigError, match=r"\.keras or \.h5"):
    keras_export.save_keras(trained_keras, tmp_path / "unet.tflite")
  existing = tmp_path / "unet.keras"
  existing.write_text("keep me")
  with pytest.raises(errors.ConfigError, match="exists"):
    keras_export.save_keras(trained_keras, existing)
  assert existing.read_text() == "keep me"


def test_calibration_images_are_the_training_streams_images(trained):  # noqa: F811
  config = trained.config
  steps = data.steps_per_epoch(config.data, global_batch_size=config.batch_size)  # The last batch is padded.
  images = list(keras_export.calibration_images(config, steps))
  stream = data.train_batches(config.data, global_batch_size=config.batch_size, seed=config.seed)
  batches = [next(stream) for _ in range(steps)]
  real = np.concatenate([batch["image"][batch["weight"] > 0] for batch in batches])
  assert len(images) == len(real) == 44  # train[:44]: the padding rows are left out.
  assert all(image.dtype == np.uint8 and image.shape == (64, 64, 3) for image in images)
  # Back through the normalisation they are the stream's images, to the rounding to whole values.
  normalized = data.normalize_image(np.stack(images).astype(np.float32), config.data.normalization)
  np.testing.assert_allclose(normalized, real, atol=0.5 / 127.5 + 1e-6)
  assert np.stack(images).std() > 10


@pytest.fixture(scope="module")
def tflite_models(trained, trained_keras) -> dict[str, bytes]:  # noqa: F811
  calibration = keras_export.calibration_images(trained.config, steps=2)
  return {
    quantize: keras_export.to_tflite(trained_keras, quantize, calibration if quantize == "int8" else None)
    for quantize in keras_export.QUANTIZE_CHOICES
  }


@pytest.mark.parametrize("quantize", keras_export.QUANTIZE_CHOICES)
def test_tflite_masks_agree_with_jax(tflite_models, trained_predictor, test_images, quantize):
  interpreter = keras_export._interpreter_class()(model_content=tflite_models[quantize])
  (input_detail,) = interpreter.get_input_details()
  assert tuple(input_detail["shape"]) == (1, 64, 64, 3)
  assert input_detail["dtype"] == (np.uint8 if quantize == "int8" else np.float32)
  if quantize == "int8":
    assert input_detail["quantization"] == (1.0, 0), "uint8 images must go in as they are"

  outputs = keras_export.run_tflite(tflite_models[quantize], test_images)
  expected = jax_logits(trained_predictor, test_images.astype(np.float32))
  assert outputs["masks"].dtype == np.int32 and outputs["masks"].shape == expected.shape[:3]
  agreement = (outputs["masks"] == expected.argmax(-1)).mean()
  assert agreement >= keras_export.TFLITE_MASK_AGREEMENT[quantize]
  assert len(np.unique(expected.argmax(-1))) == 3, "masks of one class would make the comparison meaningless"
  if quantize == "int8":
    assert set(outputs) == {"masks"}
  else:
    atol = {"none": 1e-4, "float16": 0.05 * np.abs(expected).max()}[quantize]
    np.testing.assert_allclose(outputs["logits"], expected, rtol=0, atol=atol)


def test_quantized_files_are_smaller(tflite_models):
  """float16 halves the weights, int8 quarters them; on this tiny model the per-channel quantization parameters and
  the graph weigh more than they do on a real one (int8 is 0.32 of float32 from ~600k parameters, 0.38 here)."""
  sizes = {quantize: len(model) for quantize, model in tflite_models.items()}
  assert sizes["float16"] < 0.6 * sizes["none"]
  assert sizes["int8"] < 0.4 * sizes["none"]


def test_tflite_errors(trained_keras):
  with pytest.raises(errors.ConfigError, match="quantize='int4'"):
    keras_export.to_tflite(trained_keras, "int4")
  with pytest.raises(errors.ConfigError, match="representative images"):
    keras_export.to_tflite(trained_keras, "int8")
