"""Shared by the trainer tests: a tiny config on the offline data, and the trainer CLI as a real subprocess.

Subprocesses because the device count is fixed when JAX starts, and because kill/resume needs a real process.
They share a persistent XLA compilation cache, so each distinct program compiles once per machine, not per run.
"""

import fcntl
import os
import pathlib
import runpy
import signal
import subprocess
import sys
import tempfile

import jax
import ml_collections
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SYNTHETIC_CONFIG = REPO_ROOT / "configs" / "synthetic.py"
XLA_CACHE_DIR = pathlib.Path(tempfile.gettempdir()) / "unet_jax_tests_xla_cache"
TRAINER_TIMEOUT_S = 600
jax.config.update("jax_compilation_cache_dir", str(XLA_CACHE_DIR))  # In-process tests share it too.

# The model and data of every trainer test: seconds per step on a CPU, still the real U-Net and the real stream.
TINY = {
  "seed": 0,
  "batch_size": 8,
  "num_train_steps": 6,
  "learning_rate": 3e-3,
  "log_every_steps": 1,
  "eval_every_steps": 3,
  "checkpoint_every_steps": 2,
  "max_to_keep": 2,
  "num_prediction_examples": 2,
  "model.alpha": 0.35,
  "model.decoder_filters": (32, 16, 16, 8),
  "model.pretrained": "",
  "model.freeze_encoder": True,
  # The encoder trains from step 4 on: every run crosses the phase switch (resumed, on 8 devices, restored).
  "unfreeze_at_step": 4,
  "encoder_learning_rate": 1e-3,
  "data.name": "synthetic_pets/tiny",
  # 5.5 batches of 8: step 6 is the epoch's partial batch, 4 examples and 4 rows of padding (on 8 devices, four
  # hold padding alone), so every trainer test crosses it too.
  "data.train_split": "train[:44]",
  "data.drop_remainder": False,
  "data.image_size": 64,
  "data.eval_split": "test[:20]",  # 3 eval batches of 8, the last one padded with 4 examples.
  "data.shuffle_buffer": 64,
}


def tiny_config(data_dir: str | os.PathLike, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """configs/synthetic.py with TINY, then `overrides` (dotted keys as in TINY) applied."""
  config = runpy.run_path(str(SYNTHETIC_CONFIG))["get_config"]()
  config.update_from_flattened_dict({**TINY, "data.data_dir": str(data_dir), **(overrides or {})})
  return config


def _flag_value(value) -> str:
  if isinstance(value, tuple):
    return "(" + ",".join(map(str, value)) + ",)"
  return str(value)


def trainer_command(workdir: os.PathLike, data_dir: os.PathLike, overrides: dict | None = None) -> list[str]:
  settings = {**TINY, "data.data_dir": str(data_dir), **(overrides or {})}
  return [
    sys.executable,
    "-m",
    "unet_jax.train",
    f"--config={SYNTHETIC_CONFIG}",
    f"--workdir={workdir}",
    *(f"--config.{key}={_flag_value(value)}" for key, value in settings.items()),
  ]


def trainer_env(devices: int = 1) -> dict[str, str]:
  flags = os.environ.get("XLA_FLAGS", "")
  return {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "CUDA_VISIBLE_DEVICES": "",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}",
    "JAX_COMPILATION_CACHE_DIR": str(XLA_CACHE_DIR),
    "PYTHONPATH": str(REPO_ROOT),
    # On SIGABRT (what `run_trainer` sends a trainer that outlives its timeout) Python prints every thread's stack.
    "PYTHONFAULTHANDLER": "1",
  }


def run_trainer(
  workdir: os.PathLike,
  data_dir: os.PathLike,
  overrides: dict | None = None,
  *,
  devices: int = 1,
  check: bool = True,
  cwd: os.PathLike = REPO_ROOT,
) -> subprocess.CompletedProcess:
  """The trainer CLI; a relative `workdir` is relative to `cwd`, as for a user. A trainer still running after
  `TRAINER_TIMEOUT_S` fails the test with every thread's stack, which says where it was stuck."""
  command = trainer_command(workdir, data_dir, overrides)
  with subprocess.Popen(
    command, env=trainer_env(devices), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  ) as process:
    try:
      stdout, stderr = process.communicate(timeout=TRAINER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
      process.send_signal(signal.SIGABRT)
      try:
        _, stderr = process.communicate(timeout=60)
      except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
      raise AssertionError(
        f"the trainer was still running after {TRAINER_TIMEOUT_S} s; its stderr ends (the threads' stacks last):\n"
        f"{stderr[-12000:]}"
      ) from None
  result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
  if check and result.returncode != 0:
    raise AssertionError(f"trainer exited {result.returncode}:\n{result.stderr[-6000:]}")
  return result


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
  """A tfds data_dir with `synthetic_pets/tiny` built, once per test process (import this fixture to use it)."""
  from unet_jax import data  # The data pipeline imports TensorFlow: only when a test needs it.

  data_dir = tmp_path_factory.mktemp("tfds")
  data.num_examples(tiny_config(data_dir).data, "train")  # Preparing it is part of opening it.
  return data_dir


def run_once_per_session(
  tmp_path_factory: pytest.TempPathFactory, name: str, data_dir: os.PathLike, devices: int = 1
) -> tuple[pathlib.Path, str]:
  """A trainer run (its workdir and log) made once per test session, even when pytest-xdist spreads the tests that
  read it over several workers: the first worker runs it under a file lock, the others wait and reuse it."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # The session's directory, shared by its workers.
  workdir, log = root / name, root / f"{name}.log"
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
    if not log.exists():  # A relative --workdir, as users type it.
      log.write_text(run_trainer(pathlib.Path(name), data_dir, devices=devices, cwd=root).stderr)
  return workdir, log.read_text()
