"""What the config files share: the argument of `get_config(arg)` and the local copies of data and weights.

`--config configs/X.py:ARG` hands ARG, the text after the first ':', to X's `get_config` (as ml_collections does).
ARG is a comma-separated list of bare words or `name=value` pairs, read by `parse_arg` (after big_vision's
`configs/common.parse_arg`): `configs/pets_sample.py:local` reads the copies beside the repository instead of the
public data, `configs/pets_sample.py:val1,local` also picks a variant.

The files here are loaded by path, not imported as a package, so they load each other with `runpy.run_path`.
"""

import pathlib
from typing import Any

import ml_collections

from unet_jax import errors

# The `shared` folder beside the repository: copies of public data sets and of Keras' ImageNet weights, for a machine
# that cannot download them. `:local` reads from here.
LOCAL_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
# Keras' MobileNetV2 (alpha 1.0) ImageNet weights trained at 224 px: the file model.pretrained="imagenet" downloads
# with model.imagenet_rows=224.
LOCAL_IMAGENET_H5 = LOCAL_DIR / "weights" / "mobilenet_v2_1.0_224_no_top.imagenet.keras2.h5"


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
  """`arg` ("val1,local", "variant=val1,local=true", "" or None) as the fields of `spec`, with its defaults and types.

  A bare word that names a bool field sets it to True; any other bare word is the value of the first field (the
  config's variant).
  """
  names = list(spec)
  values = {}
  for word in filter(None, (arg or "").split(",")):
    name, has_value, value = word.partition("=")
    if not has_value and isinstance(spec.get(word), bool):
      value = "true"
    elif not has_value and not isinstance(spec[names[0]], bool):
      name, value = names[0], word
    if name not in spec:
      raise errors.ConfigError(f"The config argument {arg!r}: {name!r} is unknown; this config takes {names}.")
    if name in values:
      raise errors.ConfigError(f"The config argument {arg!r} sets {name!r} twice.")
    if isinstance(spec[name], bool):
      if value.lower() not in ("true", "false"):
        raise errors.ConfigError(f"The config argument {arg!r}: {name}={value!r} must be true or false.")
      values[name] = value.lower() == "true"
    else:
      values[name] = type(spec[name])(value)
  return ml_collections.ConfigDict({**spec, **values})
