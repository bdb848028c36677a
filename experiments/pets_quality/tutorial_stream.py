"""unet_jax's trainer on the TF tutorial's own input stream: tells the stream from the framework in the fidelity
gap (README.md here).

  python experiments/pets_quality/tutorial_stream.py --config configs/pets_sample.py:local \
      --workdir /tmp/quality/jax_tutstream_s0 --config.seed=0

Everything is `python -m unet_jax.train`'s (model, train step, eval, metrics, workdir) except the batches: they come
from `tutorial_pipeline.tutorial_train_batches` (tfds-style decoding, `.cache().shuffle(1000).batch(16).repeat()`
with its partial batches, the tutorial's `Augment` layer), shuffled after `keras.utils.set_random_seed(config.seed)`
as `keras_reference.py --pipeline=tutorial` does. The stream cannot resume, so the workdir must be new.
`--drop_remainder` drops each epoch's partial batch, as `unet_jax.data` does with `data.drop_remainder=True`.
"""

from absl import app, flags
from ml_collections import config_flags
from tutorial_pipeline import as_numpy_batches, tutorial_train_batches  # This script's folder is on sys.path.

from unet_jax import data, trainer

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "A tutorial-recipe config, e.g. configs/pets_sample.py:local."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "A new directory for the run's checkpoints and metrics.", required=True)
_DROP_REMAINDER = flags.DEFINE_bool(
  "drop_remainder", False, "Drop each epoch's partial batch, as unet_jax.data does with data.drop_remainder=True."
)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  config = _CONFIG.value
  if config.data.augment.scale_crop or config.data.augment.color:
    raise app.UsageError("The tutorial's stream only flips; drop --config.data.augment.scale_crop/color.")
  import tf_keras as keras  # The tutorial's Augment layer is a Keras layer.

  keras.utils.set_random_seed(config.seed)
  stream = tutorial_train_batches(keras, config, drop_remainder=_DROP_REMAINDER.value)

  def tutorial_batches(data_config, *, global_batch_size: int, seed: int, start_step: int = 0, **unused):
    del data_config, global_batch_size, seed, unused  # Fixed by the stream above.
    if start_step:
      raise app.UsageError(
        f"{_WORKDIR.value} holds a checkpoint at step {start_step}; the tutorial's stream cannot "
        "resume there. Use a new --workdir."
      )
    return as_numpy_batches(stream)

  data.train_batches = tutorial_batches  # What trainer.train_and_evaluate reads its batches from.
  trainer.train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
