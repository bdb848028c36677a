"""launch/: the TPU scripts print exactly what they run, and the local launcher supervises its processes."""

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tarfile
import time

import pytest

from unet_jax import launch_local

LAUNCH_DIR = pathlib.Path(__file__).resolve().parents[1] / "launch"
SCRIPTS = sorted(LAUNCH_DIR.glob("*.sh"))
POD = ["--name", "seg-pod", "--zone=europe-west4-a", "--project", "my-proj"]
WORKDIR = "gs://my-bucket/pets-run"
VENV = "$HOME/unet_jax/.venv"  # as the remote commands spell it: $HOME expands on the worker.


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
  """gcloud and git that record their argv instead of touching the cloud; returns the record's path."""
  record = tmp_path / "calls.jsonl"
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("gcloud", "git"):
    fake = bin_dir / tool
    fake.write_text(
      f"#!{sys.executable}\nimport json, os, sys\n"
      f"argv = [os.path.basename(sys.argv[0]), *sys.argv[1:]]\n"
      f"open({str(record)!r}, 'a').write(json.dumps(argv) + '\\n')\n"
    )
    fake.chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  for name in ("TPU_NAME", "TPU_ZONE", "TPU_PROJECT"):
    monkeypatch.delenv(name, raising=False)
  return record


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", str(LAUNCH_DIR / name), *args], capture_output=True, text=True, timeout=60)


def dry_run(name: str, *args: str) -> list[list[str]]:
  """The commands a script prints with --dry-run, each as its words."""
  return [shlex.split(line) for line in run_script(name, "--dry-run", *args).stdout.splitlines()]


def calls(record: pathlib.Path) -> list[list[str]]:
  return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def remote_command(argv: list[str]) -> str:
  assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], argv
  return argv[argv.index("--command") + 1]


def remote_steps(argv: list[str]) -> list[list[str]]:
  """The words of each `&&`-joined step of a remote command that starts with `set -e; `."""
  command = remote_command(argv)
  assert command.startswith("set -e; "), command
  return [shlex.split(step) for step in command.removeprefix("set -e; ").split(" && ")]


POD_STEPS = [
  ("create.sh", ["--accelerator", "v4-32", "--spot"]),
  ("install.sh", []),
  ("prepare_data.sh", ["--data-dir", "gs://my-bucket/tfds"]),
  (
    "train.sh",
    [
      "--workdir",
      WORKDIR,
      "--data-dir",
      "gs://my-bucket/tfds",
      "--",
      "--config.batch_size=128",
      "--config.model.pretrained=/path with spaces/w.h5",
    ],
  ),
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
  printed = {script: dry_run(script, *POD, *args) for script, args in POD_STEPS}
  location = ["--zone=europe-west4-a", "--project=my-proj"]

  assert printed["create.sh"] == [
    [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "create",
      "seg-pod",
      *location,
      "--accelerator-type=v4-32",
      "--version=tpu-ubuntu2204-base",
      "--spot",
    ]
  ]
  archive, scp, install = printed["install.sh"]
  assert archive[:2] == ["git", "-C"] and archive[3:5] == ["archive", "--format=tar.gz"] and archive[-1] == "HEAD"
  local_archive = archive[5].removeprefix("--output=")
  shipped = "unet_jax-src.tar.gz"
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert scp[5:] == [local_archive, f"seg-pod:{shipped}", *location, "--worker=all"]
  assert install[5:9] == ["seg-pod", *location, "--worker=all"]
  steps = remote_steps(install)
  assert steps[:3] == [
    ["rm", "-rf", "unet_jax"],
    ["mkdir", "-p", "unet_jax"],
    ["tar", "-xzf", shipped, "-C", "unet_jax"],
  ]
  get_uv, make_venv, install_package, check = steps[3:]
  assert get_uv[:6] == ["PIP_BREAK_SYSTEM_PACKAGES=1", "python3", "-m", "pip", "install", "-q"]
  assert "--user" in get_uv and get_uv[-1] == "uv"
  # The image's python3 only runs uv; the package goes into a venv on Python 3.12, with jax and libtpu from [tpu].
  assert make_venv == ["python3", "-m", "uv", "venv", "-q", "--python", "3.12", VENV]
  assert install_package[:6] == ["python3", "-m", "uv", "pip", "install", "-q"]
  assert install_package[6:] == ["--python", f"{VENV}/bin/python", "-e", "./unet_jax[tpu]"]
  assert check[:2] == [f"{VENV}/bin/python", "-c"] and "import sys, flax, jax, unet_jax;" in check[2]

  (prepare,) = printed["prepare_data.sh"]
  assert prepare[5:9] == ["seg-pod", *location, "--worker=0"]
  prepare_remote = shlex.split(remote_command(prepare))
  assert prepare_remote[:2] == [f"{VENV}/bin/python", "-c"] and "download_and_prepare()" in prepare_remote[2]
  assert prepare_remote[3:] == ["oxford_iiit_pet", "gs://my-bucket/tfds"]

  (train,) = printed["train.sh"]
  assert train[5:9] == ["seg-pod", *location, "--worker=all"]
  remote = shlex.split(remote_command(train))
  assert remote[:3] == ["cd", "unet_jax", "&&"] and remote[3:5] == ["setsid", "nohup"]
  trainer = remote[5 : remote.index(">")]
  assert trainer == [
    f"{VENV}/bin/python",
    "-m",
    "unet_jax.train",
    "--config=configs/pets.py",
    f"--workdir={WORKDIR}",
    "--config.data.data_dir=gs://my-bucket/tfds",
    "--config.batch_size=128",
    "--config.model.pretrained=/path with spaces/w.h5",
  ]
  assert remote[-1] == "&" and "/dev/null" in remote

  (logs,) = printed["logs.sh"]
  assert "--worker=0" in logs and "tail" in remote_command(logs)
  assert printed["checkpoints.sh"] == [["gcloud", "storage", "ls", "--long", f"{WORKDIR}/checkpoints/"]]
  assert printed["delete.sh"] == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "seg-pod", *location, "--quiet"]]


def test_v5e_gets_its_runtime_version(fake_tools):
  out = run_script("create.sh", "--dry-run", "--accelerator=v5litepod-8", "--zone", "us-west4-a").stdout
  assert shlex.split(out)[5:] == [
    "unet-jax",
    "--zone=us-west4-a",
    "--accelerator-type=v5litepod-8",
    "--version=v2-alpha-tpuv5-lite",
  ]


@pytest.mark.parametrize(
  "script, args, message",
  [
    ("train.sh", ["--workdir", "/home/me/run"], "--workdir must be a gs:// path (got '/home/me/run')"),
    ("train.sh", [], "--workdir gs://BUCKET/RUN is required"),
    ("create.sh", ["--accelerator", "tpu9-8"], "no default --version for --accelerator=tpu9-8"),
    ("delete.sh", ["--nmae", "x"], "unknown argument '--nmae'"),
    ("logs.sh", ["--zone"], "--zone needs a value"),
    ("checkpoints.sh", ["--workdir", WORKDIR], "list or fetch"),
    ("install.sh", ["--python", "3.10"], "--python must be a Python version 3.12 or newer, e.g. 3.12 or 3.13"),
    ("install.sh", ["--python=3.12.x"], "(got '3.12.x')"),
  ],
)
def test_bad_arguments_fail_before_running_anything(fake_tools, script, args, message):
  result = run_script(script, *args)
  assert result.returncode == 2
  assert message in result.stderr
  assert calls(fake_tools) == []


def test_install_python_and_git_url_flags(fake_tools):
  url = "https://example.com/u.git"
  (install,) = dry_run("install.sh", "--python=3.13", "--git-url", url, "--git-ref=v1")  # no archive, no scp.
  steps = remote_steps(install)
  assert steps[:2] == [["rm", "-rf", "unet_jax"], ["git", "clone", "--depth=1", "--branch=v1", url, "unet_jax"]]
  assert steps[3] == ["python3", "-m", "uv", "venv", "-q", "--python", "3.13", VENV]


@pytest.fixture
def fake_worker(tmp_path):
  """A worker's home directory whose python3, and every venv python that its `uv venv` makes, record their calls."""
  home = tmp_path / "home"
  (home / "bin").mkdir(parents=True)
  record = tmp_path / "worker_calls.jsonl"
  recorder = home / "bin" / "python3"
  recorder.write_text(
    f"#!{sys.executable}\nimport json, os, pathlib, shutil, sys\n"
    f"open({str(record)!r}, 'a').write(json.dumps([sys.argv[0], os.getcwd(), *sys.argv[1:]]) + '\\n')\n"
    "if sys.argv[1:4] == ['-m', 'uv', 'venv']:\n"
    "  (pathlib.Path(sys.argv[-1]) / 'bin').mkdir(parents=True)\n"
    "  shutil.copy(sys.argv[0], pathlib.Path(sys.argv[-1], 'bin', 'python'))\n"
  )
  recorder.chmod(0o755)
  return home, record


def run_on_worker(home: pathlib.Path, argv: list[str]) -> None:
  env = {**os.environ, "HOME": str(home), "PATH": f"{home / 'bin'}{os.pathsep}{os.environ['PATH']}"}
  result = subprocess.run(["bash", "-c", remote_command(argv)], cwd=home, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


def test_remote_commands_run_on_a_worker_with_the_venv_python(fake_tools, fake_worker):
  # The commands the scripts send, run by bash in a stand-in home: $HOME expands there, the [tpu] extra reaches
  # uv as one word (a file that the unquoted glob would match is in the way), the trainer runs from the source tree.
  home, record = fake_worker
  with tarfile.open(home / "unet_jax-src.tar.gz", "w:gz") as archive:
    archive.add(LAUNCH_DIR.parent / "pyproject.toml", arcname="pyproject.toml")
  (home / "unet_jaxt").touch()
  venv_python = f"{home}/unet_jax/.venv/bin/python"

  *_, install = dry_run("install.sh")
  run_on_worker(home, install)
  python3 = str(home / "bin" / "python3")
  get_uv, make_venv, install_package, check = calls(record)
  assert get_uv[:5] == [python3, str(home), "-m", "pip", "install"]
  assert make_venv == [python3, str(home), "-m", "uv", "venv", "-q", "--python", "3.12", f"{home}/unet_jax/.venv"]
  assert install_package[2:] == ["-m", "uv", "pip", "install", "-q", "--python", venv_python, "-e", "./unet_jax[tpu]"]
  assert check[:3] == [venv_python, str(home), "-c"]
  assert (home / "unet_jax" / "pyproject.toml").exists()

  record.unlink()
  (prepare,) = dry_run("prepare_data.sh", "--data-dir=gs://b/tfds")
  run_on_worker(home, prepare)
  ((*called, dataset, data_dir),) = calls(record)
  assert called[:3] == [venv_python, str(home), "-c"] and [dataset, data_dir] == ["oxford_iiit_pet", "gs://b/tfds"]

  record.unlink()
  (train,) = dry_run("train.sh", "--workdir", WORKDIR)
  run_on_worker(home, train)  # returns at once: the trainer runs detached.
  deadline = time.monotonic() + 30
  while not calls(record) and time.monotonic() < deadline:
    time.sleep(0.1)
  ((python, cwd, *trainer_args),) = calls(record)
  assert [python, cwd] == [venv_python, str(home / "unet_jax")]
  assert trainer_args == ["-m", "unet_jax.train", "--config=configs/pets.py", f"--workdir={WORKDIR}"]
  assert (home / "unet_jax_train.log").exists()


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
  command = [
    sys.executable,
    "-c",
    "import os, sys, time\n"
    "print('process', os.environ['JAX_PROCESS_ID'], 'of', os.environ['JAX_NUM_PROCESSES'], flush=True)\n"
    "sys.exit(3) if os.environ['JAX_PROCESS_ID'] == '1' else time.sleep(60)",
  ]
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
