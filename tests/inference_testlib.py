"""Shared by the evaluate/predict/export tests: one tiny model trained in-process by the real trainer, per session.

The trainer's tiny config (alpha 0.35, 64 px, batch 8) for 4 steps, evaluated and checkpointed at steps 2 and 4.
The programs compile into the trainer tests' persistent XLA cache, so a machine that ran those compiles nothing new.
"""

import dataclasses
import json
import pathlib

import jax
import ml_collections
import pytest
import train_testlib

NUM_TRAIN_STEPS = 4
EVAL_EVERY_STEPS = 2


@dataclasses.dataclass(frozen=True)
class TrainedWorkdir:
  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  eval_metrics: dict[int, dict]  # Step -> the trainer's eval record in metrics.jsonl.


_SESSION_RUN: list[TrainedWorkdir] = []  # Module-level: each test module importing `trained` gets its own copy of
# the fixture, and they must still share one training per test process.


@pytest.fixture(scope="session")
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TrainedWorkdir:
  if not _SESSION_RUN:
    _SESSION_RUN.append(_train(request.getfixturevalue("synthetic_data_dir"), tmp_path_factory.mktemp("trained")))
  return _SESSION_RUN[0]


def _train(data_dir: pathlib.Path, workdir: pathlib.Path) -> TrainedWorkdir:
  from unet_jax import trainer  # Imports TensorFlow and the data pipeline: only when a test needs a model.

  jax.config.update("jax_compilation_cache_dir", str(train_testlib.XLA_CACHE_DIR))
  config = train_testlib.tiny_config(
    data_dir,
    {
      "num_train_steps": NUM_TRAIN_STEPS,
      "eval_every_steps": EVAL_EVERY_STEPS,
      "checkpoint_every_steps": EVAL_EVERY_STEPS,
      "max_to_keep": 3,
    },
  )
  trainer.train_and_evaluate(config, str(workdir))
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = {record["step"]: record for record in records if record["split"] == "eval"}
  assert sorted(evals) == list(range(EVAL_EVERY_STEPS, NUM_TRAIN_STEPS + 1, EVAL_EVERY_STEPS)), evals
  return TrainedWorkdir(workdir, config, evals)
