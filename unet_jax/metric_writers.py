"""Where train/eval events go: `workdir/metrics.jsonl`, TensorBoard event files, the console.

Only process 0 writes (a multi-host run would otherwise write every line N times); the others get a writer that
does nothing, so the loop needs no `if process_index == 0` around each call.

Not `clu.metric_writers`: it has no JSON-lines writer, takes only scalars (the per-class lists and the confusion
matrix would still need code here), and logs through absl rather than `tqdm.write`, so the bar would break; and
`clu.periodic_actions.ReportProgress` counts steps/s over the whole interval, eval and checkpoint time included.
"""

import json
import math
import time
from collections.abc import Callable
from typing import Any

from etils import epath
from flax.metrics import tensorboard
from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricWriter:
  def __init__(self, workdir: str, *, enabled: bool):
    self._enabled = enabled
    if enabled:
      workdir = epath.Path(workdir)
      workdir.mkdir(parents=True, exist_ok=True)
      self._jsonl = (workdir / METRICS_FILE).open("a")
      self._tensorboard = tensorboard.SummaryWriter(str(workdir / TENSORBOARD_DIR))

  def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
    """One event: a JSON line {"step", "split", **metrics}, a scalar per number (lists per class), a console line."""
    if not self._enabled:
      return
    self._jsonl.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
    self._jsonl.flush()
    for name, value in metrics.items():
      if isinstance(value, (int, float)):
        self._tensorboard.scalar(f"{split}/{name}", value, step)
      elif all(isinstance(scalar, (int, float)) for scalar in value):  # Per-class values: one curve per class.
        for index, scalar in enumerate(value):
          self._tensorboard.scalar(f"{split}/{name}_{index}", scalar, step)
      # Anything else (the confusion matrix) is for the JSON lines only.
    tqdm.write(f"[{split} step {step}] " + ", ".join(f"{name}={_format(value)}" for name, value in metrics.items()))

  def close(self) -> None:
    if self._enabled:
      self._jsonl.close()
      self._tensorboard.close()


def _format(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return "[" + " ".join(_format(v) for v in value) + "]"
  if isinstance(value, float) and math.isfinite(value) and abs(value) < 1e4:
    return f"{value:.4f}"
  return str(value)


class Throughput:
  """Images per second over the steps trained since the last mark.

  The trainer marks (`restart`) after anything that is not training (an eval, a checkpoint), so a log line after one
  counts only the steps and the time that followed it.
  """

  def __init__(self, step: int, batch_size: int, clock: Callable[[], float] = time.perf_counter):
    self._batch_size = batch_size
    self._clock = clock
    self.restart(step)

  def restart(self, step: int) -> None:
    self._step, self._time = step, self._clock()

  def images_per_second(self, step: int) -> float:
    """The rate since the last mark, which moves to `step`."""
    images = (step - self._step) * self._batch_size
    seconds = self._clock() - self._time
    self.restart(step)
    return images / seconds if seconds > 0 else math.nan
