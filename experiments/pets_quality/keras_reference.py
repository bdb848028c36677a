"""The TF tutorial's own Keras model and recipe on unet_jax's data stream: the fidelity reference, measured beside
the JAX runs instead of quoted.

  python experiments/pets_quality/keras_reference.py --config configs/pets_sample.py:local --config.seed=0
  python experiments/pets_quality/keras_reference.py --config configs/pets_sample.py:local --config.seed=0 \
      --pipeline=tutorial

Shared with `python -m unet_jax.train --config configs/pets_sample.py:local --config.seed=N`: the batches
(`unet_jax.data.train_batches` for the seed: the same shuffles and flips, in the same order), the eval split and the
metrics (one confusion matrix over every eval pixel). Keras' own: the model (bench/keras_tutorial.py, tf_keras,
the config's ImageNet .h5 in the frozen down stack, the rest initialised after `keras.utils.set_random_seed(seed)`),
the tutorial's `compile(optimizer=Adam, loss=SparseCategoricalCrossentropy(from_logits=True))` and its train loop
(`train_on_batch`). So a JAX/Keras difference over seeds is the frameworks', not the data's.

`--pipeline=tutorial` trains instead on the tutorial's own input pipeline (tutorial_pipeline.py), verbatim but for
the file reading: the config's train files decoded the way tfds decodes them (`tf.io.decode_image`, TF's JPEG
decoder rather than Pillow's), its `load_image`, `.cache().shuffle(1000).batch(16).repeat()` (a partial batch ends
every epoch), its `Augment` layer (two `RandomFlip(seed=42)`); the shuffles follow the seed through
`keras.utils.set_random_seed`, and the steps are `train_on_batch` as above (what the tutorial's `model.fit` runs).
It tells whether the tutorial's pipeline, rather than its model, explains a reference that unet_jax's batches do not
reach; `--tutorial_*` switch its parts to unet_jax's one at a time. Eval and metrics are shared as above.
Prints one JSON line: the eval metrics, steps and wall time.
"""

import json
import pathlib
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tutorial_pipeline import as_numpy_batches, tutorial_train_batches  # This script's folder is on sys.path.

from unet_jax import data, metrics

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))  # One Keras model for bench/ and here.
from keras_tutorial import keras_tutorial_unet  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "A tutorial-recipe config, e.g. configs/pets_sample.py:local."
)
_PIPELINE = flags.DEFINE_enum(
  "pipeline",
  "unet_jax",
  ["unet_jax", "tutorial"],
  "unet_jax: train on unet_jax.data.train_batches; tutorial: on the TF tutorial's "
  "tf.data pipeline over the same files.",
)
_TUTORIAL_DECODER = flags.DEFINE_enum(
  "tutorial_decoder",
  "tf",
  ["tf", "pillow"],
  "--pipeline=tutorial: decode the files as tfds does (tf) or as unet_jax's "
  "folder source does (pillow); to tell the pipeline's parts apart.",
)
_TUTORIAL_DROP_REMAINDER = flags.DEFINE_bool(
  "tutorial_drop_remainder",
  False,
  "--pipeline=tutorial: drop each epoch's partial batch, as unet_jax.data does with data.drop_remainder=True.",
)
_TUTORIAL_AS_NUMPY = flags.DEFINE_bool(
  "tutorial_as_numpy",
  False,
  "--pipeline=tutorial: hand Keras numpy batches with int32 [B, H, W] masks, "
  "the format of unet_jax's batches, instead of tensors with float [B, H, W, 1].",
)


def check_tutorial_recipe(config) -> None:
  """Keras runs the tutorial's recipe only; a config asking for more would be compared with something else."""
  recipe = {
    "optimizer": config.optimizer == "adam",
    "lr_schedule": config.lr_schedule == "constant",
    "model.freeze_encoder": config.model.freeze_encoder,
    "unfreeze_at_step": config.unfreeze_at_step <= 0,
    "dice_weight": not config.dice_weight,
    "class_weights": not len(config.class_weights),
    "eval_flip_average": not config.eval_flip_average,
    "data.folder.mask_value_map": config.data.folder.mask_value_map == "1:0,2:1,3:2",
  }  # Trimaps - 1.
  if not all(recipe.values()):
    raise app.UsageError(
      f"{[name for name, ok in recipe.items() if not ok]} differ from the tutorial's recipe "
      "(constant Adam, frozen encoder, cross-entropy, no test-time flips); use "
      "configs/pets_sample.py without those overrides."
    )
  if not config.model.pretrained.endswith(".h5"):
    raise app.UsageError(
      f"model.pretrained={config.model.pretrained!r}: the Keras down stack loads a MobileNetV2 .h5 "
      "(configs/pets_sample.py:local names the one beside the repository)."
    )


def _real_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """unet_jax pads an epoch's partial batch (data.drop_remainder=False) with weight-0 rows; Keras gets it short, as
  the tutorial's `.batch()` makes it."""
  real = batch["weight"] > 0
  return {"image": batch["image"][real], "mask": batch["mask"][real]}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  config = _CONFIG.value
  check_tutorial_recipe(config)
  tutorial_switches = [
    flag.name
    for flag in (_TUTORIAL_DECODER, _TUTORIAL_DROP_REMAINDER, _TUTORIAL_AS_NUMPY)
    if flags.FLAGS[flag.name].present
  ]
  if tutorial_switches and _PIPELINE.value != "tutorial":
    raise app.UsageError(f"--{', --'.join(tutorial_switches)} only apply to --pipeline=tutorial.")
  if _PIPELINE.value == "unet_jax":  # Built before Keras sets TF's global seed, which would change its shuffles.
    batches = map(_real_rows, data.train_batches(config.data, global_batch_size=config.batch_size, seed=config.seed))
  import tf_keras as keras  # After the flags: TensorFlow's import is slow and noisy.

  keras.utils.set_random_seed(config.seed)
  if _PIPELINE.value == "tutorial":
    stream = tutorial_train_batches(
      keras, config, decoder=_TUTORIAL_DECODER.value, drop_remainder=_TUTORIAL_DROP_REMAINDER.value
    )
    if _TUTORIAL_AS_NUMPY.value:
      batches = as_numpy_batches(stream)
    else:
      batches = ({"image": image, "mask": mask} for image, mask in stream)
  model, down_stack = keras_tutorial_unet(
    keras, config.data.image_size, config.model.num_classes, encoder_weights=config.model.pretrained
  )
  down_stack.trainable = False  # The tutorial's; Keras then runs the encoder's BatchNorm in inference mode.
  model.compile(
    optimizer=keras.optimizers.Adam(config.learning_rate),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
  )
  start = time.time()
  for _, batch in zip(range(config.num_train_steps), batches):
    train_loss = model.train_on_batch(batch["image"], batch["mask"])
  confusion = np.zeros((config.model.num_classes,) * 2, np.int64)
  for batch in data.eval_batches(config.data, global_batch_size=config.batch_size):
    predictions = model.predict_on_batch(batch["image"]).argmax(-1)
    confusion += np.asarray(
      metrics.confusion_matrix(batch["mask"], predictions, config.model.num_classes, batch["weight"])
    )
  pipeline = _PIPELINE.value
  if pipeline == "tutorial":
    pipeline += (
      f"_{_TUTORIAL_DECODER.value}"
      + ("_drop_remainder" if _TUTORIAL_DROP_REMAINDER.value else "")
      + ("_numpy" if _TUTORIAL_AS_NUMPY.value else "")
    )
  print(
    json.dumps(
      {
        "framework": "keras",
        "keras": keras.__version__,
        "pipeline": pipeline,
        "seed": config.seed,
        "steps": config.num_train_steps,
        "eval_split": config.data.eval_split,
        "final_train_loss": round(float(train_loss), 4),
        "wall_s": round(time.time() - start),
        **metrics.segmentation_metrics(confusion),
      }
    ),
    flush=True,
  )


if __name__ == "__main__":
  app.run(main)
