"""The TF tutorial's own Keras model and recipe on unet_jax's data stream: issue 7's fidelity reference, measured
beside the JAX runs instead of quoted.

  python bench/quality_keras.py --config configs/pets_sample.py --config.seed=0

Shared with `python -m unet_jax.train --config configs/pets_sample.py --config.seed=N`: the batches
(`unet_jax.data.train_batches` for the seed: the same shuffles and flips, in the same order), the eval split and the
metrics (one confusion matrix over every eval pixel). Keras' own: the model (bench/keras_tutorial.py, tf_keras,
the config's ImageNet .h5 in the frozen down stack, the rest initialised after `keras.utils.set_random_seed(seed)`),
the tutorial's `compile(optimizer=Adam, loss=SparseCategoricalCrossentropy(from_logits=True))` and its train loop
(`train_on_batch`). So a JAX/Keras difference over seeds is the frameworks', not the data's.
Prints one JSON line: the eval metrics, steps and wall time.
"""

import json
import time

from absl import app, flags
from ml_collections import config_flags
import numpy as np

from keras_tutorial import keras_tutorial_unet  # bench/ is this script's directory, so on sys.path.
from unet_jax import data, metrics

_CONFIG = config_flags.DEFINE_config_file("config", None, "A tutorial-recipe config, e.g. configs/pets_sample.py.")


def check_tutorial_recipe(config) -> None:
  """Keras runs the tutorial's recipe only; a config asking for more would be compared with something else."""
  recipe = {"optimizer": config.optimizer == "adam", "lr_schedule": config.lr_schedule == "constant",
            "model.freeze_encoder": config.model.freeze_encoder, "unfreeze_at_step": config.unfreeze_at_step <= 0,
            "dice_weight": not config.dice_weight, "class_weights": not len(config.class_weights),
            "eval_flip_average": not config.eval_flip_average}
  if not all(recipe.values()):
    raise app.UsageError(f"{[name for name, ok in recipe.items() if not ok]} differ from the tutorial's recipe "
                         "(constant Adam, frozen encoder, cross-entropy, no test-time flips); use "
                         "configs/pets_sample.py without those overrides.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  config = _CONFIG.value
  check_tutorial_recipe(config)
  # Built before Keras sets TF's global seed, which would change how tf.data seeds the shuffles.
  batches = data.train_batches(config.data, global_batch_size=config.batch_size, seed=config.seed)
  import tf_keras as keras  # After the flags: TensorFlow's import is slow and noisy.

  keras.utils.set_random_seed(config.seed)
  model, down_stack = keras_tutorial_unet(keras, config.data.image_size, config.model.num_classes,
                                          encoder_weights=config.model.pretrained)
  down_stack.trainable = False  # The tutorial's; Keras then runs the encoder's BatchNorm in inference mode.
  model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  start = time.time()
  for _, batch in zip(range(config.num_train_steps), batches):
    train_loss = model.train_on_batch(batch["image"], batch["mask"])
  confusion = np.zeros((config.model.num_classes,) * 2, np.int64)
  for batch in data.eval_batches(config.data, global_batch_size=config.batch_size):
    predictions = model.predict_on_batch(batch["image"]).argmax(-1)
    confusion += np.asarray(metrics.confusion_matrix(batch["mask"], predictions, config.model.num_classes,
                                                     batch["weight"]))
  print(json.dumps({"framework": "keras", "keras": keras.__version__, "seed": config.seed,
                    "steps": config.num_train_steps, "eval_split": config.data.eval_split,
                    "final_train_loss": round(float(train_loss), 4), "wall_s": round(time.time() - start),
                    **metrics.segmentation_metrics(confusion)}), flush=True)


if __name__ == "__main__":
  app.run(main)
