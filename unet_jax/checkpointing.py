"""Orbax checkpoints in `workdir/checkpoints`, the run's config beside them, and the SIGTERM (preemption) notice.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed mid-save leaves the
previous checkpoints as they were. A save that fails (a full disk) stops the run with the cause and the last
complete step; a checkpoint that cannot be read (truncated files) is named, and the newest readable one before it is
used. The data position needs no saving: `data.train_batches(start_step=step)` resumes the stream exactly, so the
state's step is the whole position.

`config.json` is the config that trained every checkpoint of the workdir: a resumed run may change how long it
trains and how it reports (`num_train_steps`, the eval cadence, ...), which is recorded in `config_history.jsonl`,
but not what the state is (the model, the input size, the optimizer): that would make the older checkpoints
unreadable by `evaluate`, `predict` and `export`.
"""

import contextlib
import dataclasses
import datetime
import errno
import json
import math
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from unet_jax import default_config, errors, paths, sharding, train_state
from unet_jax.models import UNet

CHECKPOINT_CHOICES = "'latest', 'best' or a step number"
CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
CONFIG_HISTORY_FILE = "config_history.jsonl"
UNREADABLE_PREFIX = "unreadable-"  # An unreadable step directory is moved aside under this name, never deleted.
_TMP_SUFFIX = ".orbax-checkpoint-tmp"
# Fields whose value defines the train state (its structure, or what its numbers mean). The rest only say how long to
# train and how to report (steps, cadence, test-time averaging, where the data is) and may change on resume.
STATE_FIELDS = ("model.", "data.image_size", "data.normalization", "optimizer", "grad_clip_norm", "unfreeze_at_step")
# Under model.*: what only the first start reads (the pretrained weights) or how a convolution is computed.
_NOT_STATE_FIELDS = ("model.pretrained", "model.imagenet_rows", "model.conv_impl")


# A checkpoint on disk is its arrays' bytes plus Orbax's metadata: measured 1.16x plus ~0.1 MiB for the tiny test
# model; the estimate errs on the side of room.
_CHECKPOINT_OVERHEAD = 1.25
_CHECKPOINT_METADATA_BYTES = 2**20


class CheckpointError(errors.UserError):
  """A checkpoint could not be written or read; the message names the step, the directory and the cause."""


def _mean_iou(metrics: dict[str, Any]) -> float:
  value = metrics.get("mean_iou", float("nan"))
  return value if math.isfinite(value) else -math.inf


def make_manager(workdir: str, *, max_to_keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  """Keeps the `max_to_keep` newest checkpoints plus the one with the best eval mean IoU."""
  options = ocp.CheckpointManagerOptions(
    preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(
      [
        ocp.checkpoint_managers.LatestN(n=max_to_keep),
        ocp.checkpoint_managers.BestN(get_metric_fn=_mean_iou, n=1, keep_checkpoints_without_metrics=False),
      ]
    ),
    best_fn=_mean_iou,  # What `best_step()` ranks by.
    read_only=read_only,
    # Writers remove half-written saves of a killed run; readers leave the directory as it is (and Orbax quiet).
    create=not read_only,
    cleanup_tmp_directories=not read_only,
    save_interval_steps=0 if read_only else 1,
    # Saves finish before training goes on: a failed one (a full disk) stops the run at once, with its cause,
    # instead of surfacing steps later from a background thread. This model's state is tens of MB.
    enable_async_checkpointing=False,
  )
  # Orbax takes absolute paths only; a Python caller's relative workdir means the current directory.
  return ocp.CheckpointManager(epath.Path(paths.resolve(workdir)) / CHECKPOINT_DIR, options=options)


def complete_steps(directory: str | os.PathLike) -> list[int]:
  """The steps whose save finished (Orbax renames a step directory into place only then), read from disk."""
  directory = epath.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(path.name) for path in directory.iterdir() if path.name.isdigit())


def remove_interrupted_saves(directory: str | os.PathLike) -> list[str]:
  """Removes the half-written step directories a killed run left behind (process 0 only) and returns their names:
  they hold no usable state, and a later save of the same step must not find them in its way."""
  directory = epath.Path(directory)
  if not directory.is_dir():
    return []
  interrupted = sorted(path for path in directory.iterdir() if path.name.endswith(_TMP_SUFFIX))
  if jax.process_index() == 0:
    for path in interrupted:
      path.rmtree()
  return [path.name for path in interrupted]


def _save_failed(manager: ocp.CheckpointManager, error: Exception) -> CheckpointError:
  complete = complete_steps(manager.directory)
  last = (
    f"The last complete checkpoint, step {complete[-1]}, is intact: fix the cause and rerun with the same "
    f"--workdir to resume from it."
    if complete
    else "No checkpoint of this run is complete yet."
  )
  return CheckpointError(
    f"Saving a checkpoint in {manager.directory} failed: {error}. Training stopped so that no "
    f"more work goes unsaved. {last}"
  )


def _check_free_space(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  """A local disk without room for the checkpoint is an error before anything is written: a save that runs out of
  space fails mid-write, in many of Orbax's threads at once."""
  directory = str(manager.directory)
  if "://" in directory:  # Object stores do not fill up.
    return
  needed = _CHECKPOINT_OVERHEAD * sum(leaf.nbytes for leaf in jax.tree.leaves(state)) + _CHECKPOINT_METADATA_BYTES
  free = shutil.disk_usage(directory).free
  if free < needed:
    raise _save_failed(
      manager,
      OSError(
        errno.ENOSPC,
        f"No space left on device: the checkpoint of step {step} needs about {needed / 2**20:.1f} MiB "
        f"and the disk has {free / 2**20:.1f} MiB free",
      ),
    )


def save(manager: ocp.CheckpointManager, step: int, state: Any, metrics: dict[str, Any] | None = None) -> bool:
  """Saves `state` as `step` unless that step is already saved; every process must call it. CheckpointError if the
  save fails, or cannot fit on a local disk."""
  if step in manager.all_steps():
    return False
  _check_free_space(manager, step, state)
  try:
    return manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
  except Exception as error:  # A full disk or a lost bucket: OSError, or TensorStore's errors as ValueError.
    raise _save_failed(manager, error) from error


def finish(manager: ocp.CheckpointManager) -> None:
  """Waits for the manager's last save and cleanup; CheckpointError if it failed."""
  try:
    manager.wait_until_finished()
    manager.check_for_errors()
  except Exception as error:  # Whatever Orbax's threads hit: OSError, or TensorStore's errors as ValueError.
    raise _save_failed(manager, error) from error


def restore(manager: ocp.CheckpointManager, step: int, target: Any) -> Any:
  """The state saved as `step`, shaped and placed as `target`; CheckpointError naming the step if it is unreadable."""
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(target))
  except Exception as error:  # Truncated or missing files surface as TensorStore, OCDBT or pytree errors.
    raise CheckpointError(
      f"The checkpoint of step {step} in {manager.directory} cannot be read: {_first_line(error)}"
    ) from error


def restore_newest_readable(
  manager: ocp.CheckpointManager, target: Callable[[int], Any], *, on_unreadable: Callable[[int], None] | None = None
) -> tuple[int, Any]:
  """(step, state) of the newest checkpoint that reads, `target(step)` giving the structure to restore into; each
  unreadable one on the way is logged, and handed to `on_unreadable` once an older one has read (so that a failure
  of every step, e.g. a state of another structure, leaves them all in place). CheckpointError when none reads."""
  problems, unreadable = [], []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state = restore(manager, step, target(step))
    except CheckpointError as error:
      logging.warning("%s; trying the checkpoint before it.", error)
      problems.append(str(error))
      unreadable.append(step)
      continue
    if on_unreadable:
      for bad_step in unreadable:
        on_unreadable(bad_step)
    return step, state
  raise CheckpointError(
    f"No checkpoint in {manager.directory} can be read ({'; '.join(problems) or 'none saved'}). "
    f"Train in a new --workdir, or restore the files from a backup."
  )


def set_aside(manager: ocp.CheckpointManager, step: int) -> None:
  """Moves an unreadable step directory to unreadable-<step> (kept for inspection), so that the resumed run can save
  that step again; process 0 only, then every manager reloads its list of steps."""
  if jax.process_index() == 0:
    source = manager.directory / str(step)
    target = manager.directory / f"{UNREADABLE_PREFIX}{step}"
    if target.exists():
      target = manager.directory / f"{UNREADABLE_PREFIX}{step}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    source.rename(target)
    logging.warning("Moved the unreadable checkpoint of step %d to %s.", step, target)
  manager.reload()


@contextlib.contextmanager
def closing(manager: ocp.CheckpointManager) -> Iterator[ocp.CheckpointManager]:
  """Closes `manager` on the way out: after waiting for its last save (CheckpointError if that failed), or, when the
  block raised, without letting a second error from the saves hide the first."""
  try:
    yield manager
  except BaseException:
    try:
      manager.close()
    except Exception as error:  # pylint: disable=broad-except
      logging.error("Closing the checkpoints in %s also failed: %s", manager.directory, _first_line(error))
    raise
  try:
    finish(manager)
  finally:
    manager.close()


class Preempted(Exception):
  """The run saved a checkpoint on SIGTERM and stopped before its last step; rerunning it resumes there."""

  def __init__(self, step: int, directory: epath.Path):
    super().__init__(
      f"Preempted (SIGTERM) at step {step}: saved a checkpoint in {directory}; rerun with the same --workdir to resume."
    )
    self.step = step


def _first_line(error: Exception) -> str:
  text = str(error).strip() or type(error).__name__
  return text.splitlines()[0][:500]


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _is_state_field(field: str) -> bool:
  return field.startswith(STATE_FIELDS) and not field.startswith(_NOT_STATE_FIELDS)


def config_changes(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
  """{field: (saved value, new value)} for every field whose value differs, compared as JSON (tuples = lists)."""
  before = _flat(json.loads(saved.to_json_best_effort()))
  after = _flat(json.loads(config.to_json_best_effort()))
  return {
    field: (before.get(field), after.get(field))
    for field in sorted(before.keys() | after.keys())
    if before.get(field) != after.get(field)
  }


def record_config(workdir: str, config: ml_collections.ConfigDict, *, has_checkpoints: bool) -> None:
  """Writes the run's config as JSON beside the checkpoints (process 0 only), for evaluation and prediction.

  When the workdir already holds checkpoints, the config they were trained with is kept: a change of a state field
  is refused (ConfigError) before anything is written; other changes are appended to config_history.jsonl.
  """
  path = epath.Path(workdir) / CONFIG_FILE
  if has_checkpoints and path.exists():
    changes = config_changes(load_config(workdir), config)
    refused = {field: change for field, change in changes.items() if _is_state_field(field)}
    if refused:
      listed = "; ".join(f"{field} was {before!r}, now {after!r}" for field, (before, after) in refused.items())
      flags = " ".join(f"--config.{field}={_flag_value(before)}" for field, (before, _) in refused.items())
      raise errors.ConfigError(
        f"{workdir} holds checkpoints of another model or optimizer than this config's: {listed}. A resumed run "
        f"must keep what its state is. Resume with the run's values ({flags}), or train in a new --workdir."
      )
    if not changes:
      return
    if jax.process_index() == 0:
      entry = {
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "changes": {field: {"from": before, "to": after} for field, (before, after) in changes.items()},
      }
      with (epath.Path(workdir) / CONFIG_HISTORY_FILE).open("a") as history:
        history.write(json.dumps(entry) + "\n")
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def _flag_value(value: Any) -> str:
  if isinstance(value, list):
    return "(" + ",".join(map(str, value)) + ",)"
  return str(value)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise errors.InputNotFoundError(f"{path} does not exist: is {workdir!r} the --workdir of a training run?")
  return ml_collections.ConfigDict(_with_defaults(json.loads(path.read_text()), default_config.get_config().to_dict()))


def _with_defaults(saved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
  """`saved` with the fields it lacks taken from `defaults`: a run saved before a field existed still loads, and
  means the field's default (which is what the run did)."""
  return {
    **defaults,
    **{
      key: _with_defaults(value, defaults[key]) if isinstance(defaults.get(key), dict) else value
      for key, value in saved.items()
    },
  }


class PreemptionNotice:
  """Tells the loop, between steps, that the run should checkpoint and exit (SIGTERM: a TPU preemption, `kill`).

  A single process catches SIGTERM itself. Several processes rely on JAX's preemption sync point instead (set up by
  `jax.distributed.initialize`), which makes all of them stop at the same step, as a collective save needs.
  """

  def __init__(self, manager: ocp.CheckpointManager):
    self._manager = manager
    self._received = threading.Event()
    self._previous_handler = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: self._received.set())

  def reached(self, step: int) -> bool:
    return self._received.is_set() or self._manager.reached_preemption(step)

  def close(self) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None


def resolve_step(manager, checkpoint: str | int, workdir: str) -> int:
  """The step that `checkpoint` ('latest', 'best' or a step number) names in `manager`, or a clear error."""
  steps = sorted(manager.all_steps())
  if not steps:
    # The trainer always needs --config: config.json only records a run's values, it is no config file.
    started = (epath.Path(workdir) / CONFIG_FILE).exists()
    config = (
      "the config file (and --config.* overrides) the run there was started with, which its config.json records"
      if started
      else "a config file"
    )
    raise errors.InputNotFoundError(
      f"{manager.directory} holds no checkpoint: train first: python -m unet_jax.train --config CONFIG --workdir "
      f"{workdir}, with CONFIG {config}, e.g. configs/synthetic.py; or point --workdir at a run that saved one."
    )
  text = str(checkpoint).strip().lower()
  if text == "latest":
    return steps[-1]
  if text == "best":
    best = manager.best_step()
    if best is None:
      raise errors.ConfigError(
        f"No checkpoint in {manager.directory} has eval metrics to rank by (steps {steps}); "
        f"use --checkpoint=latest or a step number."
      )
    return best
  if not text.isdigit():
    raise errors.ConfigError(f"--checkpoint={checkpoint!r} is not {CHECKPOINT_CHOICES}.")
  if int(text) not in steps:
    raise errors.ConfigError(
      f"{manager.directory} has no checkpoint for step {int(text)}; it has steps {steps}: "
      f"pass one of them, 'latest' or 'best'."
    )
  return int(text)


def check_workdir(workdir: str) -> None:
  """A clear error for a --workdir that does not exist, before Orbax would create it."""
  if not epath.Path(workdir).is_dir():
    raise errors.InputNotFoundError(f"The workdir {workdir!r} does not exist; pass the --workdir of a training run.")


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """One checkpoint of a run, ready to evaluate, predict with or export."""

  config: ml_collections.ConfigDict
  model: UNet
  state: train_state.TrainState  # Replicated on `mesh`.
  step: int
  mesh: jax.sharding.Mesh


def load_run(
  workdir: str, checkpoint: str | int = "latest", config: ml_collections.ConfigDict | None = None
) -> TrainedRun:
  """The run's config (or `config`, e.g. with data overrides), its model and the state of one checkpoint.

  'latest' is the newest checkpoint that reads: an unreadable newer one is named in a warning and passed over (and
  left as it is). A named step or 'best' that cannot be read is a CheckpointError.
  """
  check_workdir(workdir)
  config = config or load_config(workdir)
  mesh = sharding.make_mesh()
  with contextlib.closing(make_manager(workdir, max_to_keep=config.max_to_keep, read_only=True)) as manager:
    step = resolve_step(manager, checkpoint, workdir)
    if str(checkpoint).strip().lower() == "latest":
      step, state = restore_newest_readable(manager, lambda step: train_state.state_to_restore(config, step, mesh))
    else:
      state = restore(manager, step, train_state.state_to_restore(config, step, mesh))
  return TrainedRun(config, train_state.create_model(config.model, sharding.platform(mesh)), state, step, mesh)
