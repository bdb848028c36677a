"""unet_jax: a MobileNetV2 U-Net for semantic segmentation in JAX/Flax."""

import sys

from unet_jax import host_memory

# `python -m unet_jax.<command>`: Python imports this package to find the command, with sys.argv[0] set to "-m"
# until then, before the command's own (heavy) imports. The only moment a command can restart itself cheaply.
if sys.argv[:1] == ["-m"] and any(arg.startswith("unet_jax.") for arg in sys.orig_argv):
  host_memory.restart_with_huge_pages()


def __getattr__(name: str):
  """`unet_jax.Predictor`, imported on first use: it pulls in TensorFlow, which `unet_jax.distributed` must not."""
  if name == "Predictor":
    from unet_jax.predict import Predictor

    return Predictor
  raise AttributeError(f"module 'unet_jax' has no attribute {name!r}")
