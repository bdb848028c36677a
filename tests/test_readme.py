"""README's commands are what a new user types: CI runs its test command, and this file runs every other command it
shows, verbatim, in a fresh clone.

`test_readme_commands_work_as_typed` is marked `readme`: the main suite leaves it out (pyproject's addopts) and
`.ci/run` runs it after the suite with `pytest -m readme tests/test_readme.py`. It takes the commands from README.md
itself, so they cannot drift: the first command at full length (no `--workdir`: the default relative `runs/...`),
the resume command, then every command of "Using a trained model". The only edits are the README's placeholders:
`runs/X` becomes the run the first command made, and `photos/` is filled with real pet photos from `../shared`.
Installation is `.ci/run`'s job, so a leading `pip install ... &&` is dropped.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest
from PIL import Image

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
PLACEHOLDER_RUN = "runs/X"
NUM_PHOTOS = 4


def readme_commands() -> list[str]:
  """Every command line of README's ```bash blocks, in order, without trailing comments."""
  blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
  lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
  return [line for line in lines if line and not line.startswith("#")]


def test_ci_runs_the_readme_test_command():
  ci_lines = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()]
  test_commands = [line for line in readme_commands() if "pytest" in line]
  assert test_commands == [test_commands[0]], "README shows one test command"
  assert test_commands[0] in ci_lines, f"CI must run README's test command verbatim: {test_commands[0]!r}"
  later = ci_lines[ci_lines.index(test_commands[0]) + 1 :]
  assert any(line.startswith("pytest -m readme") and "tests/test_readme.py" in line for line in later), (
    "after the suite, CI runs this file's README commands"
  )


def test_readme_states_the_first_runs_time_and_result():
  minutes, mean_iou = _stated_first_run()
  assert minutes > 0 and 0 < mean_iou < 1


def test_the_readme_commands_are_the_ones_this_file_checks():
  """Each command's checks are below: a command added to README without them fails here, not silently."""
  modules = [
    re.search(r"python -m unet_jax\.(\w+)", line).group(1) for line in readme_commands() if "pytest" not in line
  ]
  assert modules == ["train", "train", "evaluate", "predict", "export", "export", "export", "export", "summary", "aot"]
  first, resume = [line for line in readme_commands() if "unet_jax.train" in line]
  assert "--workdir" not in first and f"--workdir {PLACEHOLDER_RUN}" in resume


def _as_typed(command: str, run: str) -> str:
  command = re.sub(r"^pip install [^&]*&&\s*", "", command)
  return command.replace(PLACEHOLDER_RUN, run)


def _run(command: str, cwd: pathlib.Path) -> tuple[subprocess.CompletedProcess, float]:
  env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
  for name in ("JAX_PLATFORMS", "XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR", "PYTHONPATH"):
    env.pop(name, None)  # As a user's shell has them: nothing set by the test session.
  start = time.monotonic()
  result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
  seconds = time.monotonic() - start
  assert result.returncode == 0, f"{command!r} exited {result.returncode}:\n{result.stderr[-5000:]}"
  return result, seconds


def _stated_first_run() -> tuple[float, float]:
  """(minutes, eval mean IoU) that README states for the first command."""
  match = re.search(r"takes about (\d+) minutes .*? eval mean IoU of (\d+\.\d+)", README.read_text(), flags=re.S)
  assert match, "README states the first command's time and eval mean IoU"
  return float(match.group(1)), float(match.group(2))


@pytest.mark.readme
def test_readme_commands_work_as_typed(tmp_path, shared_dir):
  clone = tmp_path / "unet_jax"
  subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(clone)], check=True)
  photos = sorted((shared_dir / "data" / "pets_sample" / "images").glob("*.jpg"))[:NUM_PHOTOS]
  (clone / "photos").mkdir()
  for photo in photos:
    shutil.copy(photo, clone / "photos")

  commands = [line for line in readme_commands() if "pytest" not in line]
  first, seconds = _run(_as_typed(commands[0], PLACEHOLDER_RUN), clone)
  (run_dir,) = (clone / "runs").iterdir()
  run = f"runs/{run_dir.name}"
  assert run_dir.name.startswith("synthetic-")
  events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  final_eval = [event for event in events if event["split"] == "eval"][-1]
  assert final_eval["step"] == 600 and (run_dir / "config.json").is_file()
  assert sorted(path.name for path in (run_dir / "predictions").iterdir())[-1] == "step_000600.png"
  assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
  assert 600 in [int(path.name) for path in (run_dir / "checkpoints").iterdir() if path.name.isdigit()]
  print(f"README first command: {seconds / 60:.1f} min, eval mean IoU {final_eval['mean_iou']:.3f}")
  minutes, mean_iou = _stated_first_run()
  print(f"README states about {minutes:g} min and {mean_iou}")
  assert final_eval["mean_iou"] >= mean_iou - 0.02, first.stderr[-3000:]

  for command in commands[1:]:
    result, _ = _run(_as_typed(command, run), clone)
    module = re.search(r"python -m unet_jax\.(\w+)", command).group(1)
    if module == "train":
      assert f"Resumed from {run_dir / 'checkpoints'} at step 600" in result.stderr
    elif module == "evaluate":
      assert (run_dir / "evaluation").is_dir() and "mean IoU" in result.stdout
      (written,) = (run_dir / "evaluation").glob("step_*_test.json")
      assert 0 < json.loads(written.read_text())["mean_iou"] <= 1
    elif module == "predict":
      for photo in photos:
        with Image.open(clone / "masks" / f"{photo.stem}_mask.png") as mask, Image.open(photo) as image:
          assert mask.size == image.size and mask.mode == "P"
        assert (clone / "masks" / f"{photo.stem}_overlay.png").is_file()
    elif module == "export":
      output = re.search(r"--output (\S+)", command).group(1)
      written = json.loads((clone / f"{output.rstrip('/')}.json").read_text())
      assert written["format"] == (re.search(r"--format (\w+)", command) or [None, "savedmodel"])[1]
      assert (clone / output).exists() and written["mask_agreement"] >= 0.95, written
      if written["format"] == "savedmodel":
        assert (clone / output / "saved_model.pb").is_file()
    elif module == "aot":
      programs = [json.loads(line)["program"] for line in result.stdout.splitlines() if line.startswith("{")]
      assert programs == ["train_frozen_encoder", "eval"] and "img/s" in result.stderr
    elif module == "summary":
      assert "Total params: 6,504,227" in result.stdout
