"""Markdown rows for results.md here from training workdirs: the last eval of each run, plus `evaluate` results.

Reads `metrics.jsonl` (the trainer's eval events: validation for `:val` runs, test otherwise) and
`evaluation/step_*_test*.json` (written by `python -m unet_jax.evaluate`; each row names the evaluation's
overrides, and its split is the list the evaluation read: the run's, or the one an override gave). Wall time is from
the run's start (the timestamp in its TensorBoard event file's name) to its last metrics line; it includes
compilation and eval. With LOAD_LOG set to a file of `HH:MM:SS load1 ...` lines (`echo "$(date +%H:%M:%S)
$(cat /proc/loadavg)"` every minute), the table adds the mean 1-minute load average of the 2-core machine during
each run: wall times vary ~3x with the machine's load.

  LOAD_LOG=/tmp/quality/load.log python experiments/pets_quality/table.py /tmp/quality/tutorial_s0 \
      /tmp/quality/best400_val_s0
"""

import datetime
import json
import os
import pathlib
import sys

CLASSES = ("pet", "background", "border")


def _mean_load(start: float, end: float) -> str:
  """Mean 1-minute load average between two timestamps (same UTC day), from $LOAD_LOG; "" without it."""
  if not os.environ.get("LOAD_LOG"):
    return ""
  day = datetime.datetime.fromtimestamp(start, datetime.UTC).date()
  loads = []
  for line in pathlib.Path(os.environ["LOAD_LOG"]).read_text().splitlines():
    clock, load = line.split()[:2]
    moment = datetime.datetime.combine(day, datetime.time.fromisoformat(clock), datetime.UTC).timestamp()
    if start <= moment <= end:
      loads.append(float(load))
  return f"{sum(loads) / len(loads):.1f}" if loads else ""


def _row(name: str, split: str, metrics: dict, steps: int, wall: str, load: str) -> str:
  ious = " | ".join(f"{iou:.3f}" for iou in metrics["iou_per_class"])
  return (
    f"| {name} | {split} | {steps} | {metrics['pixel_accuracy']:.3f} | {ious} | **{metrics['mean_iou']:.3f}** "
    f"| {wall} | {load} |"
  )


def _split_label(test_list: str) -> str:
  """pets_sample's lists: a fold's 60 held-out trainval images (configs/pets_sample_split/), or the official test."""
  if "pets_sample_split" not in test_list:
    return "test (298)"
  fold = pathlib.Path(test_list).parent.name  # foldK; the earliest runs read a single split, now fold0.
  return f"val{fold.removeprefix('fold') if fold.startswith('fold') else 0} (60)"


def rows(workdir: pathlib.Path) -> list[str]:
  events = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
  config = json.loads((workdir / "config.json").read_text())
  start = min(int(path.name.split(".")[3]) for path in (workdir / "tensorboard").glob("events.out.tfevents.*"))
  end = (workdir / "metrics.jsonl").stat().st_mtime
  wall, load = f"{(end - start) / 60:.0f}", _mean_load(start, end)
  eval_events = [event for event in events if event["split"] == "eval"]
  test_list = config["data"]["folder"]["test_list"]
  out = []
  if eval_events:
    last = eval_events[-1]
    out.append(_row(workdir.name, _split_label(test_list), last, last["step"], wall, load))
  for path in sorted((workdir / "evaluation").glob("step_*_test*.json")):
    metrics = json.loads(path.read_text())
    overrides = metrics.get("overrides", {})
    name = ", ".join([workdir.name] + [f"{key}={value}" for key, value in sorted(overrides.items())])
    split = _split_label(overrides.get("data.folder.test_list", test_list))
    out.append(_row(name, f"{split}, evaluate", metrics, metrics["step"], "", ""))
  return out


def main(workdirs: list[str]) -> None:
  print("| run | eval split | steps | pixel acc | IoU " + " | IoU ".join(CLASSES) + " | mean IoU | wall min | load |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for workdir in workdirs:
    print("\n".join(rows(pathlib.Path(workdir))))


if __name__ == "__main__":
  main(sys.argv[1:])
