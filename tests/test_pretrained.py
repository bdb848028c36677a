"""Loading Keras' ImageNet MobileNetV2 weights: the real file, the Keras cache, the download, and clear failures."""

import functools
import http.server
import pathlib
import socket
import tempfile
import threading
import time

import h5py
import jax
import numpy as np
import pytest
from PIL import Image

from unet_jax import pretrained
from unet_jax.models import MobileNetV2

OFFICIAL_NAME = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
PET_IMAGES = ("Abyssinian_1.jpg", "Bengal_10.jpg", "american_bulldog_100.jpg")


@pytest.fixture(scope="module")
def imagenet_variables(imagenet_h5):
  return pretrained.mobilenet_v2_variables_from_h5(imagenet_h5, alpha=1.0)


@pytest.fixture
def closed_port_url(monkeypatch) -> str:
  """Points the loader at a localhost port nobody listens on: a refused connection, never the internet."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}/mobilenet_v2/"
  monkeypatch.setattr(pretrained, "BASE_WEIGHT_URL", url)
  return url


@pytest.fixture
def isolated_keras_cache(tmp_path, monkeypatch) -> pathlib.Path:
  """No real Keras cache is visible: HOME and the temp dir (Keras' fallback cache) point into tmp_path."""
  monkeypatch.delenv("KERAS_HOME", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
  return tmp_path


def assert_same_variables(actual, expected) -> None:
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  jax.tree.map(np.testing.assert_array_equal, actual, expected)


def test_imagenet_file_gives_sane_features_on_real_images(shared_dir, imagenet_h5, imagenet_variables):
  images = np.stack(
    [
      np.asarray(
        Image.open(shared_dir / "data" / "pets_sample" / "images" / name).convert("RGB").resize((128, 128)), np.float32
      )
      / 127.5
      - 1
      for name in PET_IMAGES
    ]
  )
  taps = jax.jit(MobileNetV2().apply)(imagenet_variables, images)

  for tap in map(np.asarray, taps):
    assert np.all(np.isfinite(tap))
    assert tap.std() > 0.1
    assert not np.allclose(tap[0], tap[1])  # Different pets, different features.
  # Trained weights fed real images reproduce the statistics the next BatchNorm learned: the per-channel mean of
  # block_16_project follows block_16_project_BN's moving mean (a layer the U-Net does not load).
  moving_mean = pretrained.read_keras_h5(imagenet_h5)["block_16_project_BN"][2]
  assert np.corrcoef(np.asarray(taps[-1]).mean(axis=(0, 1, 2)), moving_mean)[0, 1] > 0.9


def test_imagenet_file_converts_by_layer_name(imagenet_h5, imagenet_variables):
  with h5py.File(imagenet_h5, "r") as f:
    depthwise = np.asarray(f["block_5_depthwise"]["block_5_depthwise"]["depthwise_kernel:0"])
    variance = np.asarray(f["block_5_depthwise_BN"]["block_5_depthwise_BN"]["moving_variance:0"])
  np.testing.assert_array_equal(
    imagenet_variables["params"]["block_5_depthwise"]["kernel"], depthwise.transpose(0, 1, 3, 2)
  )
  np.testing.assert_array_equal(imagenet_variables["batch_stats"]["block_5_depthwise_BN"]["var"], variance)
  assert "Conv_1" not in imagenet_variables["params"]  # Layers after block_16_project are ignored.


@pytest.mark.parametrize("home_variable", ["KERAS_HOME", "HOME"])
def test_loader_reuses_the_keras_cache(
  isolated_keras_cache, monkeypatch, closed_port_url, imagenet_h5, imagenet_variables, home_variable
):
  """Keras 3 caches under $KERAS_HOME/models, tf.keras under ~/.keras/models; both are found without a network."""
  tmp_path = isolated_keras_cache
  keras_home = tmp_path / "keras_home" if home_variable == "KERAS_HOME" else tmp_path / "home" / ".keras"
  if home_variable == "KERAS_HOME":
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
  (keras_home / "models").mkdir(parents=True)
  (keras_home / "models" / OFFICIAL_NAME).symlink_to(imagenet_h5)

  assert_same_variables(pretrained.load_mobilenet_v2_imagenet(alpha=1.0, rows=224), imagenet_variables)


def test_loader_downloads_into_the_cache_atomically(tmp_path, monkeypatch, imagenet_h5, imagenet_variables):
  served = tmp_path / "served"
  served.mkdir()
  (served / OFFICIAL_NAME).symlink_to(imagenet_h5)
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
  handler.log_message = lambda *args: None
  with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(pretrained, "BASE_WEIGHT_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    variables = pretrained.load_mobilenet_v2_imagenet(cache_dir=tmp_path / "cache")
    server.shutdown()

  assert_same_variables(variables, imagenet_variables)
  assert [p.name for p in (tmp_path / "cache").iterdir()] == [OFFICIAL_NAME]  # No partial file left behind.


def test_loader_offline_and_uncached_fails_fast_and_says_what_to_do(isolated_keras_cache, monkeypatch, closed_port_url):
  tmp_path = isolated_keras_cache
  monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
  name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_128_no_top.h5"
  start = time.monotonic()
  with pytest.raises(pretrained.WeightsUnavailableError) as error:
    pretrained.load_mobilenet_v2_imagenet(alpha=0.35, rows=128)
  assert time.monotonic() - start < 5
  message = str(error.value)
  for part in (closed_port_url + name, str(tmp_path / "keras_home" / "models" / name), "model.pretrained", '""'):
    assert part in message
  assert not list((tmp_path / "keras_home" / "models").iterdir())  # Nothing half-written.


@pytest.mark.parametrize("alpha, rows, message", [(0.6, 224, "alpha=0.6"), (1.0, 256, "rows=256")])
def test_loader_rejects_what_keras_does_not_publish(alpha, rows, message):
  with pytest.raises(ValueError, match=message):
    pretrained.load_mobilenet_v2_imagenet(alpha=alpha, rows=rows)


@pytest.mark.parametrize("height, width, rows", [(128, 128, 128), (224, 224, 224), (256, 256, 224), (128, 96, 224)])
def test_default_rows_follow_keras_applications(height, width, rows):
  assert pretrained.keras_default_rows(height, width) == rows


def test_file_of_another_architecture_is_a_clear_error(tmp_path):
  path = tmp_path / "resnet.h5"
  with h5py.File(path, "w") as f:  # The legacy Keras layout, holding some other network.
    f.attrs["layer_names"] = [b"conv1_conv"]
    layer = f.create_group("conv1_conv")
    layer.attrs["weight_names"] = [b"conv1_conv/kernel:0"]
    layer.create_dataset("conv1_conv/kernel:0", data=np.zeros((7, 7, 3, 64), np.float32))
  with pytest.raises(ValueError, match="no layer 'block_16_project'.*conv1_conv"):
    pretrained.mobilenet_v2_variables_from_h5(path)


def test_file_without_keras_layout_is_a_clear_error(tmp_path):
  path = tmp_path / "plain.h5"
  with h5py.File(path, "w") as f:
    f["x"] = np.zeros(3)
  with pytest.raises(ValueError, match="neither a legacy Keras HDF5 weight file"):
    pretrained.mobilenet_v2_variables_from_h5(path)


def test_file_of_another_alpha_is_a_clear_error(imagenet_h5):
  with pytest.raises(ValueError, match=r"alpha=1\.0, but alpha=0\.35 was asked for"):
    pretrained.mobilenet_v2_variables_from_h5(imagenet_h5, alpha=0.35)


def test_mismatched_layer_is_named(imagenet_h5):
  layers = pretrained.read_keras_h5(imagenet_h5)
  layers["block_5_depthwise"] = [np.zeros((3, 3, 40, 1), np.float32)]
  del layers["block_9_project_BN"]
  with pytest.raises(
    ValueError,
    match=r"block_5_depthwise/kernel has shape \(3, 3, 1, 40\).*\(3, 3, 1, 192\)"
    r".*'block_9_project_BN' is missing",
  ):
    pretrained.mobilenet_v2_variables(layers)
