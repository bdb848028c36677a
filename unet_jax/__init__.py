"""unet_jax: a MobileNetV2 U-Net for semantic segmentation in JAX/Flax."""
