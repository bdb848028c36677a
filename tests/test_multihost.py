"""Multi-host training rehearsed on one machine: the trainer CLI as 2 real processes x 2 CPU devices (gloo
collectives, a localhost coordinator), compared with one process on 4 simulated devices.

Each process reads its own shard of the split, so a 2-process global batch holds other examples than a 1-process
stream's. The reference therefore feeds its trainer the global batches the two processes build together (the two
process streams, side by side): the same examples, the same program, so the same losses; what may differ is only
the multi-host machinery under test (initialisation, per-process feeding, cross-process reductions, checkpoints).
"""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
import train_testlib
from train_testlib import synthetic_data_dir  # noqa: F401  (a fixture)

from unet_jax import checkpointing, data, launch_local, metric_writers, trainer

NUM_PROCESSES, LOCAL_DEVICES = 2, 2
# A step of the tiny model is what costs; one eval (on one batch) and one checkpoint, both at the last step. The
# 27 train examples are process shards of 14 and 13: step 4 ends the epoch with 2 and 1 padding rows per process.
OVERRIDES = {
  "num_train_steps": 4,
  "eval_every_steps": 4,
  "checkpoint_every_steps": 4,
  "data.eval_split": "test[:8]",
  "data.train_split": "train[:27]",
}
# Generous for 2 busy shared cores (a healthy run takes about a minute), finite so that a hang fails the test.
TIMEOUT_S = 480


def _events(workdir: pathlib.Path, split: str) -> list[dict]:
  lines = (workdir / metric_writers.METRICS_FILE).read_text().splitlines()
  return [event for event in map(json.loads, lines) if event["split"] == split]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_data_dir):  # noqa: F811
  """Both runs at once (the 2-process one through the launcher, the reference as a script); their workdirs, and
  the output of each of the two processes."""
  root = tmp_path_factory.mktemp("multihost")
  workdir, reference_workdir, reference_log = root / "two_processes", root / "reference", root / "reference.log"
  with reference_log.open("w") as log:
    reference = subprocess.Popen(
      [sys.executable, __file__, str(reference_workdir), str(synthetic_data_dir)],
      env=train_testlib.trainer_env(NUM_PROCESSES * LOCAL_DEVICES),
      cwd=train_testlib.REPO_ROOT,
      stdout=log,
      stderr=subprocess.STDOUT,
    )
    try:
      results = launch_local.launch(
        train_testlib.trainer_command(workdir, synthetic_data_dir, OVERRIDES),
        num_processes=NUM_PROCESSES,
        local_devices=LOCAL_DEVICES,
        timeout_s=TIMEOUT_S,
        echo=False,
        env=train_testlib.trainer_env(LOCAL_DEVICES),
      )
      reference.wait(timeout=TIMEOUT_S)
    finally:
      reference.kill()
  for result in results:
    assert result.returncode == 0, f"process {result.process_id} exited {result.returncode}:\n{result.output[-6000:]}"
  assert reference.returncode == 0, f"the reference exited {reference.returncode}:\n{reference_log.read_text()[-6000:]}"
  return workdir, reference_workdir, [result.output for result in results]


def test_two_processes_train_like_one_process_with_four_devices(runs):
  workdir, reference, outputs = runs
  assert "Run: processes=2 devices=4 local_devices=2 (cpu) mesh=(data=4) global_batch=8 local_batch=4" in outputs[0]
  assert "Run: " not in outputs[1]  # The start line and the config are logged once, by process 0.

  losses = [event["loss"] for event in _events(workdir, "train")]
  reference_losses = [event["loss"] for event in _events(reference, "train")]
  assert len(losses) == OVERRIDES["num_train_steps"]
  np.testing.assert_allclose(losses, reference_losses, rtol=1e-5, atol=1e-6)
  (evaluation,), (reference_evaluation,) = _events(workdir, "eval"), _events(reference, "eval")
  assert evaluation["loss"] == pytest.approx(reference_evaluation["loss"], rel=1e-4)
  assert evaluation["pixel_accuracy"] == pytest.approx(reference_evaluation["pixel_accuracy"], abs=1e-3)


def test_only_process_0_writes_logs_and_figures(runs):
  workdir, _, _ = runs
  assert [path.relative_to(workdir) for path in workdir.rglob("*.jsonl")] == [pathlib.Path(metric_writers.METRICS_FILE)]
  assert len(list(workdir.rglob("events.out.tfevents.*"))) == 1
  assert len(list(workdir.rglob("*.png"))) == 1
  # One line per step: a second writer appending to the same file would repeat them.
  assert [event["step"] for event in _events(workdir, "train")] == list(range(1, OVERRIDES["num_train_steps"] + 1))


def test_their_checkpoint_restores_in_one_process(runs):
  workdir, reference_workdir, _ = runs
  run, reference = checkpointing.load_run(str(workdir)), checkpointing.load_run(str(reference_workdir))
  assert jax.process_count() == 1 and run.step == reference.step == OVERRIDES["num_train_steps"]
  # Adam moves a weight by about its learning rate whatever the size of its gradient, so where a gradient is near 0
  # the float rounding of the cross-process reduction can show in a weight as a fraction of a step. Such weights are
  # few; feeding or reducing the wrong rows would move most weights by whole steps (1e-3 to 3e-3 here).
  leaves = zip(
    jax.tree.leaves(jax.device_get((run.state.params, run.state.batch_stats))),
    jax.tree.leaves(jax.device_get((reference.state.params, reference.state.batch_stats))),
    strict=True,
  )
  differences = np.concatenate([np.abs(np.asarray(x) - np.asarray(y)).ravel() for x, y in leaves])
  assert np.mean(differences > 1e-6) < 1e-3, f"{np.mean(differences > 1e-6):.2%} of the weights differ by > 1e-6"
  assert differences.max() < 1e-3, f"a weight differs by {differences.max():.3g}, a whole optimizer step"


def test_multi_process_flags_reach_distributed_initialize(tmp_path):
  """--num_processes/--process_id without a coordinator: a usage error naming what is missing, before any training."""
  env = {
    name: value
    for name, value in train_testlib.trainer_env().items()
    if name not in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
  }
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "unet_jax.train",
      f"--config={train_testlib.SYNTHETIC_CONFIG}",
      f"--workdir={tmp_path / 'run'}",
      "--num_processes=2",
      "--process_id=0",
    ],
    env=env,
    cwd=train_testlib.REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 1, result.stderr[-3000:]
  assert "missing: coordinator_address (JAX_COORDINATOR_ADDRESS)" in result.stderr
  assert "num_processes=2, process_id=0" in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()


def _train_reference(workdir: str, data_dir: str) -> None:
  """The trainer in this single process, its train and eval data the two processes' side by side."""

  def train_as_two_processes(stream):
    def global_batches(*args, **kwargs):
      per_process = [
        stream(*args, **kwargs, process_index=i, process_count=NUM_PROCESSES) for i in range(NUM_PROCESSES)
      ]
      for parts in zip(*per_process):
        yield jax.tree.map(lambda *rows: np.concatenate(rows), *parts)

    return global_batches

  def eval_as_two_processes(dataset):
    def global_dataset(*args, **kwargs):
      parts = tuple(
        dataset(*args, **kwargs, process_index=i, process_count=NUM_PROCESSES) for i in range(NUM_PROCESSES)
      )
      return tf.data.Dataset.zip(parts).map(lambda *rows: tf.nest.map_structure(lambda *r: tf.concat(r, 0), *rows))

    return global_dataset

  data.train_batches = train_as_two_processes(data.train_batches)
  data.eval_dataset = eval_as_two_processes(data.eval_dataset)
  trainer.train_and_evaluate(train_testlib.tiny_config(data_dir, OVERRIDES), workdir)


if __name__ == "__main__":
  _train_reference(*sys.argv[1:])
