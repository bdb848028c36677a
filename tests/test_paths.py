"""Paths the user types are resolved once: local to absolute, URLs untouched."""

import os

from unet_jax import paths


def test_relative_and_home_paths_become_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert paths.resolve("runs/x") == str(tmp_path / "runs" / "x")
  assert paths.resolve("./a/../b") == str(tmp_path / "b")
  assert paths.resolve("~/data") == os.path.join(os.path.expanduser("~"), "data")
  assert paths.resolve(tmp_path / "c") == str(tmp_path / "c")


def test_urls_and_empty_paths_stay_as_they_are():
  assert paths.resolve("gs://bucket/runs/x") == "gs://bucket/runs/x"
  assert paths.resolve("s3://bucket/x/../y") == "s3://bucket/x/../y"
  assert paths.resolve("") == ""
