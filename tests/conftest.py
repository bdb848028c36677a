"""Shared test setup: CPU backend, quiet TensorFlow, and the read-only real data beside the repo."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # TensorFlow must not look for a GPU in tests.

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
  """`../shared` (real data and ImageNet weights); tests that need it skip when it is absent."""
  if not SHARED_DIR.is_dir():
    pytest.skip(f"{SHARED_DIR} is absent: real data and weights live beside the repository")
  return SHARED_DIR


@pytest.fixture(scope="session")
def imagenet_h5(shared_dir: pathlib.Path) -> pathlib.Path:
  path = shared_dir / "weights" / "mobilenet_v2_1.0_224_no_top.imagenet.keras2.h5"
  if not path.is_file():
    pytest.skip(f"{path} is absent")
  return path
