"""The jax2tf SavedModel: it gives the JAX predictor's masks for uint8 images of any size."""

import numpy as np
import pytest
import tensorflow as tf
from inference_testlib import trained  # noqa: F401  (a fixture)
from train_testlib import synthetic_data_dir  # noqa: F401  (a fixture)

from unet_jax import export, predict


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
