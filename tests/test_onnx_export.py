"""The ONNX export: onnxruntime gives the JAX model's logits and masks, at any batch size, from one file."""

import importlib.util
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_testlib import TINY

from unet_jax import errors, onnx_export, predict
from unet_jax.models import UNet

_MISSING = [name for name in ("jax2onnx", "onnxruntime", "onnx") if importlib.util.find_spec(name) is None]
needs_onnx = pytest.mark.skipif(
  bool(_MISSING), reason=f"{', '.join(_MISSING)} not installed: the export extra, `pip install -e '.[export]'`"
)

SIZE = TINY["data.image_size"]
NUM_CLASSES = 3
# Logits: float32 sums in another order (onnxruntime's kernels); measured ~1e-7 on this model.
LOGITS_ATOL = 1e-4


def tiny_predictor(upsample: str, **options) -> predict.Predictor:
  """The trainer tests' tiny U-Net with random weights, and batch statistics away from their init (0, 1) so that
  BatchNorm's inference arithmetic is exercised. numpy's rng, not `init`'s: no threefry compile (slow on CPU)."""
  model = UNet(
    num_classes=NUM_CLASSES, alpha=TINY["model.alpha"], decoder_filters=TINY["model.decoder_filters"], upsample=upsample
  )
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    if path[-1].key in ("scale", "var"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(0, 1 / np.sqrt(leaf.size / leaf.shape[-1]), leaf.shape).astype(np.float32)

  variables = jax.tree_util.tree_map_with_path(fill, shapes)
  return predict.Predictor(model, variables, SIZE, "minus_one_to_one", NUM_CLASSES, **options)


def images(batch: int, seed: int, dtype=np.float32) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (batch, SIZE, SIZE, 3)).astype(dtype)


def jax_logits(predictor: predict.Predictor, batch: np.ndarray) -> np.ndarray:
  return np.asarray(
    predict.model_logits(
      predictor.model,
      predictor.normalization,
      predictor.flip_average,
      predictor.scales,
      predictor.variables,
      jnp.asarray(batch, jnp.float32),
    )
  )


@needs_onnx
@pytest.mark.parametrize("upsample, input_dtype", [("transpose", np.uint8), ("nearest", np.float32)])
def test_onnxruntime_gives_the_jax_logits_at_any_batch_size(upsample, input_dtype, tmp_path):
  import onnx

  predictor = tiny_predictor(upsample)
  path = tmp_path / "model.onnx"
  onnx.save(onnx_export.to_onnx(predictor, input_dtype), path)
  (batch_dim,) = {dim.dim_param for dim in onnx.load(path).graph.input[0].type.tensor_type.shape.dim[:1]}
  assert batch_dim == onnx_export.BATCH
  all_inputs = images(3, seed=0, dtype=input_dtype)
  all_want = jax_logits(predictor, all_inputs)
  classes_seen = set()
  for batch in (1, 3):  # One file, two batch sizes: the batch is dynamic.
    inputs, want = all_inputs[:batch], all_want[:batch]
    outputs = onnx_export.check_with_onnxruntime(path, inputs)
    assert outputs["logits"].shape == (batch, SIZE, SIZE, NUM_CLASSES) and outputs["masks"].dtype == np.int32
    np.testing.assert_allclose(outputs["logits"], want, rtol=0, atol=LOGITS_ATOL)
    np.testing.assert_array_equal(outputs["masks"], want.argmax(-1))
    classes_seen |= set(np.unique(outputs["masks"]).tolist())
  assert len(classes_seen) > 1, "a constant mask would make this comparison meaningless"
  other_dtype = np.float32 if input_dtype == np.uint8 else np.uint8
  with pytest.raises(errors.ConfigError, match=f"got {np.dtype(other_dtype).name}"):
    onnx_export.check_with_onnxruntime(path, all_inputs.astype(other_dtype))


@needs_onnx
@pytest.mark.parametrize("augmentation", [{"flip_average": True}, {"scales": (0.5, 1.0)}])
def test_test_time_augmentation_is_refused(augmentation):
  with pytest.raises(errors.ConfigError, match="flip_average=False, scales=\\(1.0,\\)"):
    onnx_export.to_onnx(tiny_predictor("nearest", **augmentation))


def test_keep_size_predictor_is_refused():
  with pytest.raises(errors.ConfigError, match="keep_size=False"):
    onnx_export.to_onnx(tiny_predictor("nearest", keep_size=True))


def test_a_missing_dependency_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "jax2onnx", None)  # `import jax2onnx` now raises ImportError.
  with pytest.raises(onnx_export.MissingDependencyError, match=r"pip install -e \"\.\[export\]\""):
    onnx_export.to_onnx(tiny_predictor("nearest"))
