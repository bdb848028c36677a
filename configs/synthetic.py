"""The U-Net on the offline `synthetic_pets` dataset: the first command to run, no download, CPU-sized.

What it reproduces: the tutorial's recipe (3-class trimap segmentation, Adam, flips) on procedurally generated
pet-like images that tfds builds locally on first use, so a fresh machine without a network trains end to end.
There are no ImageNet weights offline, so the encoder starts from a random init and trains with the decoder
(`freeze_encoder=False`); alpha 0.35 and small images keep it fast on a CPU.

Hardware and time: TO BE MEASURED.
Expected result: TO BE MEASURED.

Run:
  python -m unet_jax.train --config configs/synthetic.py
"""

import ml_collections

from unet_jax import default_config


def get_config() -> ml_collections.ConfigDict:
  config = default_config.get_config()
  config.seed = 0
  config.batch_size = 32
  config.num_epochs = 8
  config.learning_rate = 2e-3
  config.lr_schedule = "cosine"
  config.warmup_steps = 50
  config.log_every_steps = 20
  config.eval_every_steps = -1  # Every epoch.
  config.checkpoint_every_steps = -1

  config.model.alpha = 0.35
  config.model.decoder_filters = (128, 64, 32, 16)
  config.model.pretrained = ""  # No weights offline.
  config.model.freeze_encoder = False  # A random encoder must learn too.

  config.data.name = "synthetic_pets"
  config.data.image_size = 96
  config.data.augment.flip = True
  return config
