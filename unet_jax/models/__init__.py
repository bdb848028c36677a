"""The models: the MobileNetV2 encoder (Keras layer for layer) and the tutorial's U-Net on top of it."""

from unet_jax.models.mobilenet_v2 import MobileNetV2
from unet_jax.models.unet import UNet

__all__ = ["MobileNetV2", "UNet"]
