"""The TensorFlow "image segmentation" tutorial, reproduced: a MobileNetV2 U-Net on Oxford-IIIT Pet.

What it reproduces: tensorflow.org/tutorials/images/segmentation. oxford_iiit_pet at 128x128 px, 3 classes
(pet, background, border), random horizontal flips, batch 64, Adam at Keras' default 1e-3, 20 passes over the
3,680 train images in 58 steps each (the last a batch of 32, as the tutorial's `.batch()` leaves it; its Keras epochs
count 3,680 // 64 = 57 steps), the ImageNet MobileNetV2 (alpha 1.0) encoder frozen and the pix2pix decoder trained;
here the eval runs on the whole test split (3,669 images) after every epoch, where the tutorial uses a fifth of it.
One deliberate difference: inputs are scaled to [-1, 1], what the encoder was trained with; the tutorial feeds
x / 255 (add --config.data.normalization=zero_to_one for that).

Hardware and time: one GPU or TPU host (1,160 steps of 64 images at 128 px; no timing recorded yet). On a CPU
expect hours.
Expected result: the tutorial's curves end near 0.9 pixel accuracy on the test images after 20 epochs; this
config logs the same figure as `pixel_accuracy` (plus per-class IoU and mean IoU) in `workdir/metrics.jsonl`.

Needs the prepared dataset (`tfds build oxford_iiit_pet --data_dir=DIR`, about 800 MB) and the Keras ImageNet
weights (downloaded to ~/.keras/models on first use, or point --config.model.pretrained at a local .h5).

Run:
  python -m unet_jax.train --config configs/pets.py --workdir runs/pets --config.data.data_dir=DIR
"""

import ml_collections

from unet_jax import default_config


def get_config() -> ml_collections.ConfigDict:
  # The defaults are the tutorial's recipe (batch 64, 20 epochs, Adam 1e-3, frozen ImageNet encoder, 128 px, flips).
  config = default_config.get_config()
  config.log_every_steps = 10
  config.data.drop_remainder = False  # Every image every epoch, the partial batch padded (the tutorial keeps it).
  return config
