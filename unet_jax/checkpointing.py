"""Orbax checkpoints in `workdir/checkpoints`, the run's config beside them, and the SIGTERM (preemption) notice.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed mid-save leaves the
previous checkpoints as they were. The data position needs no saving: `data.train_batches(start_step=step)` resumes
the stream exactly, so the state's step is the whole position.
"""

import json
import math
import signal
import threading
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from unet_jax import default_config, sharding

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"


def _mean_iou(metrics: dict[str, Any]) -> float:
  value = metrics.get("mean_iou", float("nan"))
  return value if math.isfinite(value) else -math.inf


def make_manager(workdir: str, *, max_to_keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  """Keeps the `max_to_keep` newest checkpoints plus the one with the best eval mean IoU."""
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy([
          ocp.checkpoint_managers.LatestN(n=max_to_keep),
          ocp.checkpoint_managers.BestN(get_metric_fn=_mean_iou, n=1, keep_checkpoints_without_metrics=False),
      ]),
      best_fn=_mean_iou,  # What `best_step()` ranks by.
      read_only=read_only,
      # Writers remove half-written saves of a killed run; readers leave the directory as it is (and Orbax quiet).
      create=not read_only,
      cleanup_tmp_directories=not read_only,
      save_interval_steps=0 if read_only else 1,
  )
  return ocp.CheckpointManager(epath.Path(workdir) / CHECKPOINT_DIR, options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, metrics: dict[str, Any] | None = None) -> bool:
  """Saves `state` as `step` (asynchronously) unless that step is already saved; every process must call it."""
  if step in manager.all_steps():
    return False
  return manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)


def abstract_state(state_shapes: Any, mesh: jax.sharding.Mesh) -> Any:
  """Shapes and dtypes of a state (from `jax.eval_shape`) placed replicated on `mesh`: what a restore fills in.

  The target sharding is the current mesh's, so a checkpoint written on N devices restores on any other count.
  """
  replicated = sharding.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state_shapes)


def restore(manager: ocp.CheckpointManager, step: int, target: Any) -> Any:
  return manager.restore(step, args=ocp.args.StandardRestore(target))


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the run's config as JSON beside the checkpoints (process 0 only), for evaluation and prediction."""
  if jax.process_index() == 0:
    path = epath.Path(workdir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist: is {workdir!r} the --workdir of a training run?")
  return ml_collections.ConfigDict(_with_defaults(json.loads(path.read_text()), default_config.get_config().to_dict()))


def _with_defaults(saved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
  """`saved` with the fields it lacks taken from `defaults`: a run saved before a field existed still loads, and
  means the field's default (which is what the run did)."""
  return {**defaults, **{key: _with_defaults(value, defaults[key]) if isinstance(defaults.get(key), dict) else value
                         for key, value in saved.items()}}


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
