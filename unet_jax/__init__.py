"""unet_jax: a MobileNetV2 U-Net for semantic segmentation in JAX/Flax."""


def __getattr__(name: str):
  """`unet_jax.Predictor`, imported on first use: it pulls in TensorFlow, which `unet_jax.distributed` must not."""
  if name == "Predictor":
    from unet_jax.predict import Predictor

    return Predictor
  raise AttributeError(f"module 'unet_jax' has no attribute {name!r}")
