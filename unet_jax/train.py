"""Trains the U-Net: `python -m unet_jax.train --config configs/pets.py [--workdir DIR] [--config.batch_size=16]`.

The program around `trainer.train_and_evaluate`: flags, the multi-process start, the default workdir, and the exit
status of a preempted run.
"""

import datetime
import pathlib
import signal
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from unet_jax import checkpointing, cli, distributed, host_memory, paths, trainer

FLAGS = flags.FLAGS
# A run stopped by SIGTERM exits as a process killed by it would (128 + 15), after saving: a scheduler sees it did not
# finish, and rerunning the same command resumes it.
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


def default_workdir(config_path: str) -> str:
  """runs/<config name>-<time> under the current directory, absolute."""
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return paths.resolve(pathlib.Path("runs") / f"{pathlib.Path(config_path).stem}-{stamp}")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; options go as --flag=value.")
  cli.quiet_library_logs()
  reused = host_memory.reuse_freed_blocks()  # Before JAX starts its CPU client.
  logging.info("Host memory: %s%s", host_memory.describe(), "; freed blocks reused by the next step" if reused else "")
  cli.use_compilation_cache(FLAGS.config.compilation_cache_dir)  # Before joining: a multi-host CPU run turns it off.
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  workdir = paths.resolve(FLAGS.workdir)
  if not workdir:
    if jax.process_count() > 1:
      raise app.UsageError("A multi-process run needs an explicit --workdir shared by all processes.")
    workdir = default_workdir(FLAGS["config"].config_filename)
  logging.info("Workdir: %s", workdir)
  try:
    trainer.train_and_evaluate(FLAGS.config, workdir)
  except checkpointing.Preempted as preempted:
    logging.warning("%s", preempted)
    sys.exit(PREEMPTED_EXIT_CODE)


def define_flags() -> None:
  """The trainer's flags, defined only when this module runs as a program (importing a module claims no flag
  names)."""
  config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file (a get_config() module), e.g. configs/pets.py; override fields with --config.field=value.",
    lock_config=True,
  )
  flags.DEFINE_string(
    "workdir",
    "",
    "Where checkpoints, metrics and figures go (local or gs://). An existing "
    "workdir resumes from its latest checkpoint. Default: a new runs/<config>-<time>.",
  )
  # Multi-process runs (GPU clusters, CPU rehearsals); each falls back to its JAX_* environment variable, and Cloud
  # TPU VMs and single-process runs need none of them.
  flags.DEFINE_string("coordinator_address", "", "HOST:PORT of process 0 (default: $JAX_COORDINATOR_ADDRESS).")
  flags.DEFINE_integer("num_processes", -1, "Processes in the run (-1: $JAX_NUM_PROCESSES).")
  flags.DEFINE_integer("process_id", -1, "This process's id, 0 on the coordinator's host (-1: $JAX_PROCESS_ID).")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  cli.run(main, name="train", define_flags=define_flags)
