"""launch/: the TPU scripts print exactly what they run, and the local launcher supervises its processes."""

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from unet_jax import launch_local

LAUNCH_DIR = pathlib.Path(__file__).resolve().parents[1] / "launch"
SCRIPTS = sorted(LAUNCH_DIR.glob("*.sh"))
POD = ["--name", "seg-pod", "--zone=europe-west4-a", "--project", "my-proj"]
WORKDIR = "gs://my-bucket/pets-run"


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
  """gcloud and git that record their argv instead of touching the cloud; returns the record's path."""
  record = tmp_path / "calls.jsonl"
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("gcloud", "git"):
    fake = bin_dir / tool
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"argv = [os.path.basename(sys.argv[0]), *sys.argv[1:]]\n"
                    f"open({str(record)!r}, 'a').write(json.dumps(argv) + '\\n')\n")
    fake.chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  for name in ("TPU_NAME", "TPU_ZONE", "TPU_PROJECT"):
    monkeypatch.delenv(name, raising=False)
  return record


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", str(LAUNCH_DIR / name), *args], capture_output=True, text=True, timeout=60)


def calls(record: pathlib.Path) -> list[list[str]]:
  return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def remote_command(argv: list[str]) -> str:
  assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], argv
  return argv[argv.index("--command") + 1]


POD_STEPS = [
    ("create.sh", ["--accelerator", "v4-32", "--spot"]),
    ("install.sh", []),
    ("prepare_data.sh", ["--data-dir", "gs://my-bucket/tfds"]),
    ("train.sh", ["--workdir", WORKDIR, "--data-dir", "gs://my-bucket/tfds", "--", "--config.batch_size=128",
                  "--config.model.pretrained=/path with spaces/w.h5"]),
    ("logs.sh", []),
    ("checkpoints.sh", ["list", "--workdir", WORKDIR]),
    ("delete.sh", ["--yes"]),
]


@pytest.mark.parametrize("script, args", POD_STEPS, ids=[step[0] for step in POD_STEPS])
def test_dry_run_prints_exactly_what_a_real_run_executes(fake_tools, script, args):
  dry = run_script(script, "--dry-run", *POD, *args)
  assert dry.returncode == 0, dry.stderr
  assert calls(fake_tools) == [], "--dry-run must run nothing"
  printed = [shlex.split(line) for line in dry.stdout.splitlines()]
  assert printed

  real = run_script(script, *POD, *args)
  assert real.returncode == 0, real.stderr
  assert calls(fake_tools) == printed


def test_pod_slice_dry_run_creates_installs_trains_on_all_workers_and_deletes(fake_tools):
  printed = {script: [shlex.split(line) for line in run_script(script, "--dry-run", *POD, *args).stdout.splitlines()]
             for script, args in POD_STEPS}
  location = ["--zone=europe-west4-a", "--project=my-proj"]

  assert printed["create.sh"] == [["gcloud", "compute", "tpus", "tpu-vm", "create", "seg-pod", *location,
                                   "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"]]
  archive, scp, install = printed["install.sh"]
  assert archive[:2] == ["git", "-C"] and "archive" in archive
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  assert install[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "seg-pod"] and "--worker=all" in install
  assert "pip install -q -e ./unet_jax" in remote_command(install)
  assert "jax[tpu]==" in remote_command(install)

  (train,) = printed["train.sh"]
  assert train[5:9] == ["seg-pod", *location, "--worker=all"]
  remote = shlex.split(remote_command(train))
  assert remote[:3] == ["cd", "unet_jax", "&&"] and remote[3:5] == ["setsid", "nohup"]
  trainer = remote[5:remote.index(">")]
  assert trainer == ["python3", "-m", "unet_jax.train", "--config=configs/pets.py", f"--workdir={WORKDIR}",
                     "--config.data.data_dir=gs://my-bucket/tfds", "--config.batch_size=128",
                     "--config.model.pretrained=/path with spaces/w.h5"]
  assert remote[-1] == "&" and "/dev/null" in remote

  (logs,) = printed["logs.sh"]
  assert "--worker=0" in logs and "tail" in remote_command(logs)
  assert printed["checkpoints.sh"] == [["gcloud", "storage", "ls", "--long", f"{WORKDIR}/checkpoints/"]]
  assert printed["delete.sh"] == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "seg-pod", *location, "--quiet"]]


def test_v5e_gets_its_runtime_version(fake_tools):
  out = run_script("create.sh", "--dry-run", "--accelerator=v5litepod-8", "--zone", "us-west4-a").stdout
  assert shlex.split(out)[5:] == ["unet-jax", "--zone=us-west4-a", "--accelerator-type=v5litepod-8",
                                  "--version=v2-alpha-tpuv5-lite"]


@pytest.mark.parametrize("script, args, message", [
    ("train.sh", ["--workdir", "/home/me/run"], "--workdir must be a gs:// path (got '/home/me/run')"),
    ("train.sh", [], "--workdir gs://BUCKET/RUN is required"),
    ("create.sh", ["--accelerator", "tpu9-8"], "no default --version for --accelerator=tpu9-8"),
    ("delete.sh", ["--nmae", "x"], "unknown argument '--nmae'"),
    ("logs.sh", ["--zone"], "--zone needs a value"),
    ("checkpoints.sh", ["--workdir", WORKDIR], "list or fetch"),
])
def test_bad_arguments_fail_before_running_anything(fake_tools, script, args, message):
  result = run_script(script, *args)
  assert result.returncode == 2
  assert message in result.stderr
  assert calls(fake_tools) == []


def test_help_is_the_script_header():
  result = run_script("train.sh", "--help")
  assert result.returncode == 0
  assert result.stdout.startswith("Starts training on every worker")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (.ci/run installs it with apt-get)")
  result = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stdout


def test_local_launcher_stops_the_others_when_one_process_fails():
  # Process 1 fails at once; process 0 would otherwise sit in a collective (here: a sleep) for a minute.
  command = [sys.executable, "-c", "import os, sys, time\n"
             "print('process', os.environ['JAX_PROCESS_ID'], 'of', os.environ['JAX_NUM_PROCESSES'], flush=True)\n"
             "sys.exit(3) if os.environ['JAX_PROCESS_ID'] == '1' else time.sleep(60)"]
  start = time.monotonic()
  results = launch_local.launch(command, num_processes=2, echo=False)
  assert time.monotonic() - start < 30
  assert results[1].returncode == 3 and results[1].output == "process 1 of 2\n"
  assert results[0].returncode != 0  # stopped by the launcher, not finished.


def test_local_launcher_times_out_with_every_process_tail():
  command = [sys.executable, "-c", "import time; print('waiting', flush=True); time.sleep(60)"]
  with pytest.raises(TimeoutError, match=r"(?s)process 0.*waiting.*process 1.*waiting"):
    launch_local.launch(command, num_processes=2, timeout_s=3, echo=False)


def test_local_launcher_cli_passes_trainer_args_through(tmp_path, capsys):
  # `--module` swaps the trainer for json.tool: its output shows that the args after `--` arrived.
  data = tmp_path / "data.json"
  data.write_text('{"b": 1, "a": 2}')
  rc = launch_local.main(["--num_processes=2", "--module", "json.tool", "--", "--sort-keys", "--compact", str(data)])
  assert rc == 0
  assert sorted(capsys.readouterr().out.splitlines()) == ['[process 0] {"a":2,"b":1}', '[process 1] {"a":2,"b":1}']
