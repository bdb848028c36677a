"""Keras weights -> Flax variables: Keras' ImageNet MobileNetV2 files, and whole U-Nets trained with the TF tutorial.

The Flax modules carry the Keras layer names (see `unet_jax.models.mobilenet_v2`), so conversion is by name. Keras
layouts that differ from Flax: a depthwise kernel is (kh, kw, C, 1) in Keras and (kh, kw, 1, C) for Flax's grouped
conv; BatchNorm stores [gamma, beta, moving_mean, moving_variance], Flax `scale`/`bias` params and `mean`/`var` stats.
Conv2DTranspose kernels are (kh, kw, out, in) in both (the U-Net uses `transpose_kernel=True`).
"""

import os
import pathlib
import re
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import h5py
import jax
import jax.numpy as jnp
import numpy as np

from unet_jax import errors
from unet_jax.models.mobilenet_v2 import BLOCKS, KERAS_ALPHAS, TAPS, MobileNetV2, block_prefix, make_divisible

# Where `keras.applications.MobileNetV2(weights="imagenet")` downloads from.
BASE_WEIGHT_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
KERAS_ROWS = (96, 128, 160, 192, 224)
# Socket timeout (connect, and each read) of the download: fail fast offline rather than hang.
DOWNLOAD_TIMEOUT_S = 10.0

Variables = dict[str, dict[str, Any]]
_LAST_ENCODER_LAYER = TAPS[-1]  # block_16_project: its output channels give alpha.


class WeightsUnavailableError(errors.UserError, OSError):
  """The ImageNet weights are neither in the Keras cache nor downloadable."""


def keras_weight_file_name(alpha: float, rows: int) -> str:
  """The file name Keras uses for the no-top ImageNet MobileNetV2 weights (and caches under ~/.keras/models)."""
  if alpha not in KERAS_ALPHAS:
    raise errors.ConfigError(f"Keras has ImageNet MobileNetV2 weights for alpha in {KERAS_ALPHAS}; got alpha={alpha}.")
  if rows not in KERAS_ROWS:
    raise errors.ConfigError(f"Keras has ImageNet MobileNetV2 weights for rows in {KERAS_ROWS}; got rows={rows}.")
  return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


def keras_default_rows(height: int, width: int) -> int:
  """The file `keras.applications.MobileNetV2(input_shape=(height, width, 3), weights="imagenet")` loads: the one
  trained at that size when it is square and published, else 224 (the tutorial's 128 px input gets the 128 file)."""
  return height if height == width and height in KERAS_ROWS else 224


def _keras3_layer_names() -> dict[str, list[str]]:
  """The Keras layer names of MobileNetV2, per layer class, in model order.

  A Keras 3 `.weights.h5` file names its groups by class and position (`conv2d_7`, `batch_normalization_12`), not by
  layer name; the n-th group of a class is the n-th layer of that class in the model.
  """
  prefixes = [block_prefix(block_id) for block_id in range(len(BLOCKS))]
  expand = lambda prefix: [] if prefix == block_prefix(0) else [prefix + "expand"]  # Block 0 has no expansion.
  return {
    "conv2d": ["Conv1"] + [name for p in prefixes for name in expand(p) + [p + "project"]] + ["Conv_1"],
    "depthwise_conv2d": [p + "depthwise" for p in prefixes],
    "batch_normalization": ["bn_Conv1"]
    + [name + "_BN" for p in prefixes for name in expand(p) + [p + "depthwise", p + "project"]]
    + ["Conv_1_bn"],
  }


def _read_legacy_h5(group: h5py.Group) -> dict[str, list[np.ndarray]]:
  """Keras 2's HDF5 layout: attribute `layer_names`, and per layer group an attribute `weight_names` in order."""
  decode = lambda name: name.decode() if isinstance(name, bytes) else str(name)
  layers = {}
  for layer_name in map(decode, group.attrs["layer_names"]):
    layer = group[layer_name]
    layers[layer_name] = [np.asarray(layer[decode(w)]) for w in layer.attrs["weight_names"]]
  return layers


def _read_keras3_h5(group: h5py.Group, path: os.PathLike) -> dict[str, list[np.ndarray]]:
  """Keras 3's `.weights.h5` layout of a MobileNetV2 application model: `layers/<class>_<n>/vars/<i>`."""
  layers = {}
  for class_name, layer_names in _keras3_layer_names().items():
    numbered = (re.fullmatch(rf"{class_name}(?:_(\d+))?", key) for key in group)
    stored = [match.string for match in sorted(filter(None, numbered), key=lambda match: int(match[1] or 0))]
    if len(stored) != len(layer_names):
      raise errors.ConfigError(
        f"{path} is a Keras 3 weights file but not of keras.applications.MobileNetV2(include_top=False): it has "
        f"{len(stored)} '{class_name}' layers where MobileNetV2 has {len(layer_names)}."
      )
    for key, layer_name in zip(stored, layer_names):
      variables = group[key]["vars"]
      layers[layer_name] = [np.asarray(variables[str(i)]) for i in range(len(variables))]
  return layers


def read_keras_h5(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
  """Reads a Keras weight file: legacy HDF5 (also a whole-model .h5), or Keras 3 `.weights.h5` of a MobileNetV2.

  Args:
    path: the .h5 file.

  Returns:
    Keras layer name -> that layer's weights, in Keras' order.
  """
  with h5py.File(path, "r") as f:
    group = f["model_weights"] if "model_weights" in f else f
    if "layer_names" in group.attrs:
      return _read_legacy_h5(group)
    if "layers" in group and "conv2d" in group["layers"]:
      return _read_keras3_h5(group["layers"], path)
  raise errors.ConfigError(
    f"{path} is neither a legacy Keras HDF5 weight file (root attribute 'layer_names') nor a Keras 3 .weights.h5 of "
    f"MobileNetV2; save the Keras model with `model.save_weights('weights.h5')`."
  )


def _infer_alpha(layers: Mapping[str, Sequence[np.ndarray]], source: str) -> float:
  """MobileNetV2's width multiplier from the output channels of `block_16_project`, unique per Keras alpha."""
  if _LAST_ENCODER_LAYER not in layers:
    examples = ", ".join(list(layers)[:5])
    raise errors.ConfigError(
      f"{source} does not hold Keras MobileNetV2 weights: it has no layer {_LAST_ENCODER_LAYER!r} "
      f"(its first layers: {examples or 'none'})."
    )
  channels = layers[_LAST_ENCODER_LAYER][0].shape[-1]
  by_channels = {make_divisible(int(BLOCKS[-1][1] * alpha)): alpha for alpha in KERAS_ALPHAS}
  if channels not in by_channels:
    raise errors.ConfigError(
      f"{source}: {_LAST_ENCODER_LAYER} has {channels} output channels, which matches none of Keras' MobileNetV2 "
      f"alphas (channels -> alpha: {by_channels})."
    )
  return by_channels[channels]


def mobilenet_v2_variables(
  layers: Mapping[str, Sequence[np.ndarray]], alpha: float | None = None, source: str = "the Keras weights"
) -> Variables:
  """Converts Keras MobileNetV2 layer weights to `MobileNetV2` variables.

  Args:
    layers: Keras layer name -> weights (as `read_keras_h5` returns); layers MobileNetV2 lacks are ignored.
    alpha: the width the weights must have; None takes the one their shapes give.
    source: where the weights came from, for error messages.

  Returns:
    {"params", "batch_stats"} for `MobileNetV2(alpha)`.
  """
  inferred = _infer_alpha(layers, source)
  if alpha is not None and alpha != inferred:
    raise errors.ConfigError(
      f"{source} holds MobileNetV2 weights for alpha={inferred}, but alpha={alpha} was asked for: set "
      f"model.alpha={inferred}, or use weights for alpha={alpha}."
    )
  expected = jax.eval_shape(MobileNetV2(inferred).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  params, batch_stats, problems = {}, {}, []
  for name, expected_params in expected["params"].items():
    weights = layers.get(name)
    if weights is None:
      problems.append(f"layer {name!r} is missing")
      continue
    if "scale" in expected_params:  # BatchNormalization.
      if len(weights) != 4:
        problems.append(f"layer {name!r} has {len(weights)} weights, BatchNorm needs 4")
        continue
      gamma, beta, mean, var = weights
      converted = {"params": {"scale": gamma, "bias": beta}, "batch_stats": {"mean": mean, "var": var}}
    else:
      if len(weights) != 1:
        problems.append(f"layer {name!r} has {len(weights)} weights, a bias-free conv needs 1")
        continue
      kernel = weights[0].transpose(0, 1, 3, 2) if name.endswith("depthwise") else weights[0]
      converted = {"params": {"kernel": kernel}}
    for collection, arrays in converted.items():
      for key, array in arrays.items():
        want = expected[collection][name][key].shape
        if array.shape != want:
          problems.append(f"{name}/{key} has shape {array.shape}, MobileNetV2(alpha={inferred}) needs {want}")
    params[name] = {k: jnp.asarray(v, jnp.float32) for k, v in converted["params"].items()}
    if "batch_stats" in converted:
      batch_stats[name] = {k: jnp.asarray(v, jnp.float32) for k, v in converted["batch_stats"].items()}
  if problems:
    shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
    raise errors.ConfigError(f"{source} does not fit MobileNetV2(alpha={inferred}): {shown}.")
  return {"params": params, "batch_stats": batch_stats}


def mobilenet_v2_variables_from_h5(path: str | os.PathLike, alpha: float | None = None) -> Variables:
  """`mobilenet_v2_variables` of a Keras weight file, e.g. Keras' official no-top ImageNet file.

  Args:
    path: the .h5 file.
    alpha: as in `mobilenet_v2_variables`.

  Returns:
    {"params", "batch_stats"} for `MobileNetV2`.
  """
  return mobilenet_v2_variables(read_keras_h5(path), alpha=alpha, source=str(path))


def _keras_cache_dirs(cache_dir: str | os.PathLike | None) -> list[pathlib.Path]:
  """Where Keras keeps downloaded weights: $KERAS_HOME (Keras 3), ~/.keras (tf.keras), /tmp/.keras (its fallback)."""
  if cache_dir is not None:
    return [pathlib.Path(cache_dir)]
  homes = [os.environ["KERAS_HOME"]] if os.environ.get("KERAS_HOME") else []
  homes += [os.path.join(os.path.expanduser("~"), ".keras"), os.path.join(tempfile.gettempdir(), ".keras")]
  return list(dict.fromkeys(pathlib.Path(home) / "models" for home in homes))


def _download(url: str, path: pathlib.Path) -> None:
  """Downloads to a temporary file beside `path` and renames it into place, so no reader sees a partial file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
  try:
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
      while chunk := response.read(1 << 20):
        out.write(chunk)
    if not h5py.is_hdf5(tmp):
      raise OSError("the server answered with something that is not an HDF5 file")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def load_mobilenet_v2_imagenet(
  alpha: float = 1.0, rows: int = 224, cache_dir: str | os.PathLike | None = None
) -> Variables:
  """Keras' ImageNet MobileNetV2 (no top) as `MobileNetV2` variables.

  Reuses the file Keras caches (so a user who ran the TF tutorial has it already), else downloads it from Keras'
  address into the cache.

  Args:
    alpha: the width multiplier, one of Keras' (`KERAS_ALPHAS`).
    rows: which of Keras' files, by the input size it was trained at (see `keras_default_rows`); the weights work at
      any input size.
    cache_dir: where to look and download to; None: Keras' own cache directories.

  Returns:
    {"params", "batch_stats"} for `MobileNetV2(alpha)`.
  """
  name = keras_weight_file_name(alpha, rows)
  cache_dirs = _keras_cache_dirs(cache_dir)
  for directory in cache_dirs:
    if (directory / name).is_file():
      return mobilenet_v2_variables_from_h5(directory / name, alpha=alpha)
  url, path = BASE_WEIGHT_URL + name, cache_dirs[0] / name
  try:
    _download(url, path)
  except OSError as error:  # Includes urllib's URLError and socket timeouts.
    raise WeightsUnavailableError(
      f"The ImageNet MobileNetV2 weights {name} are not cached ({', '.join(map(str, cache_dirs))}) and downloading "
      f"{url} failed: {error}. Without network access, fetch that file elsewhere and put it at {path} (where Keras "
      f'also looks), or set model.pretrained to a Keras .h5 path, or to "" to train from scratch.'
    ) from error
  return mobilenet_v2_variables_from_h5(path, alpha=alpha)


def _leaf_layers(layer: Any) -> Iterator[Any]:
  """A Keras model's layers in order, with nested models (the down stack, the pix2pix Sequentials) expanded."""
  sublayers = getattr(layer, "layers", None)
  if sublayers is None:
    yield layer
    return
  for sublayer in sublayers:
    yield from _leaf_layers(sublayer)


def unet_variables_from_keras(keras_model: Any) -> Variables:
  """Variables for `UNet` from a Keras model built as the TF segmentation tutorial builds it.

  That is: the MobileNetV2 down stack (a nested model), pix2pix upsample blocks (Conv2DTranspose without bias,
  BatchNormalization, optional Dropout, ReLU), and a last Conv2DTranspose with bias. The nearest decoder's Keras
  form (`keras_export.to_keras`), UpSampling2D then a Conv2D in place of each Conv2DTranspose, converts the same way.

  Args:
    keras_model: the built Keras model (its layers' `get_weights()` are read).

  Returns:
    {"params", "batch_stats"} for a `UNet` with the same alpha, decoder filters and num_classes, and
    upsample="transpose" (or "nearest" for the UpSampling2D form).
  """
  layers = list(_leaf_layers(keras_model))
  encoder = mobilenet_v2_variables({layer.name: layer.get_weights() for layer in layers}, source=keras_model.name)
  upsample_convs = [
    layer
    for layer in layers
    if type(layer).__name__ in ("Conv2DTranspose", "Conv2D") and layer.name not in encoder["params"]
  ]
  decoder_norms = [
    layer for layer in layers if type(layer).__name__ == "BatchNormalization" and layer.name not in encoder["params"]
  ]
  if not upsample_convs or len(upsample_convs) - 1 != len(decoder_norms) or len(upsample_convs[-1].get_weights()) != 2:
    raise errors.ConfigError(
      f"{keras_model.name} is not the tutorial's U-Net: expected upsample blocks of Conv2DTranspose(use_bias=False) + "
      f"BatchNormalization and a last Conv2DTranspose with bias (or Conv2D after UpSampling2D); found "
      f"{len(upsample_convs)} decoder Conv2DTranspose/Conv2D and {len(decoder_norms)} decoder BatchNormalization "
      f"layers."
    )
  *blocks, last = upsample_convs
  params, batch_stats = {"encoder": encoder["params"]}, {"encoder": encoder["batch_stats"]}
  for index, (conv, norm) in enumerate(zip(blocks, decoder_norms)):
    (kernel,) = conv.get_weights()
    gamma, beta, mean, var = norm.get_weights()
    params[f"up_{index}"] = {"conv": {"kernel": kernel}, "bn": {"scale": gamma, "bias": beta}}
    batch_stats[f"up_{index}"] = {"bn": {"mean": mean, "var": var}}
  kernel, bias = last.get_weights()
  params["last"] = {"kernel": kernel, "bias": bias}
  return jax.tree.map(lambda array: jnp.asarray(array, jnp.float32), {"params": params, "batch_stats": batch_stats})
