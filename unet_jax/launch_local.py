"""Rehearses a multi-host run on one machine: N CPU processes, gloo collectives, a localhost coordinator.

  python -m unet_jax.launch_local --num_processes=2 --local_devices=2 -- \\
      --config configs/synthetic.py --workdir runs/rehearsal

Everything after `--` goes to `python -m unet_jax.train` unchanged. Each process gets the environment a
cluster scheduler would give it (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) plus
JAX_PLATFORMS=cpu and JAX_NUM_CPU_DEVICES, so the trainer's `distributed.initialize()` joins them exactly as
on a pod. If one process fails the others are stopped: otherwise they would block in a collective until
the coordinator's heartbeat timeout.
"""

import argparse
import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

# Seconds a stopped process gets to exit after SIGTERM before SIGKILL.
_TERMINATE_GRACE_S = 10.0


@dataclasses.dataclass
class ProcessResult:
  process_id: int
  returncode: int
  output: str  # stdout and stderr, interleaved as written.


def free_port() -> int:
  """A TCP port that was free a moment ago (the coordinator binds it right after)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def process_env(
  process_id: int, num_processes: int, local_devices: int, port: int, base: Mapping[str, str] | None = None
) -> dict[str, str]:
  """The environment of one rehearsal process: `base` (default: ours) plus what a cluster scheduler would set."""
  env = dict(os.environ if base is None else base)
  env.update(
    JAX_PLATFORMS="cpu",
    JAX_NUM_CPU_DEVICES=str(local_devices),
    JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
    JAX_NUM_PROCESSES=str(num_processes),
    JAX_PROCESS_ID=str(process_id),
  )
  return env


def launch(
  command: Sequence[str],
  *,
  num_processes: int,
  local_devices: int = 1,
  port: int = 0,
  timeout_s: float | None = None,
  echo: bool = True,
  env: Mapping[str, str] | None = None,
) -> list[ProcessResult]:
  """Runs `command` as `num_processes` cooperating JAX processes and waits for all of them.

  `env` is the environment every process starts from (default: this process's), before the launcher's variables.
  Returns one result per process (ordered by process id). When one process fails, the rest are stopped.
  Raises TimeoutError, with the tail of every process's output, if they are not done after `timeout_s`.
  """
  if num_processes < 1 or local_devices < 1:
    raise ValueError(f"num_processes={num_processes} and local_devices={local_devices} must both be >= 1.")
  port = port or free_port()
  procs = [
    subprocess.Popen(
      list(command),
      env=process_env(i, num_processes, local_devices, port, env),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      bufsize=1,
    )
    for i in range(num_processes)
  ]
  outputs: list[list[str]] = [[] for _ in procs]
  pumps = [
    threading.Thread(target=_pump, args=(proc, i, outputs[i], echo), daemon=True) for i, proc in enumerate(procs)
  ]
  for pump in pumps:
    pump.start()

  deadline = None if timeout_s is None else time.monotonic() + timeout_s
  timed_out = False
  while True:
    codes = [proc.poll() for proc in procs]  # Poll every process: a failure anywhere ends the wait.
    if None not in codes or any(code not in (None, 0) for code in codes):
      break
    if deadline is not None and time.monotonic() > deadline:
      timed_out = True
      break
    time.sleep(0.1)
  _stop(procs)
  for pump in pumps:
    pump.join(timeout=_TERMINATE_GRACE_S)

  results = [ProcessResult(i, proc.returncode, "".join(outputs[i])) for i, proc in enumerate(procs)]
  if timed_out:
    tails = "\n".join(f"--- process {r.process_id} (last lines) ---\n{_tail(r.output)}" for r in results)
    raise TimeoutError(
      f"{num_processes} processes of {' '.join(command)} did not finish in {timeout_s} s; all were stopped.\n{tails}"
    )
  return results


def _pump(proc: subprocess.Popen, process_id: int, lines: list[str], echo: bool) -> None:
  for line in proc.stdout:
    lines.append(line)
    if echo:
      sys.stdout.write(f"[process {process_id}] {line}")
      sys.stdout.flush()


def _stop(procs: Sequence[subprocess.Popen]) -> None:
  for proc in procs:
    if proc.poll() is None:
      proc.terminate()
  for proc in procs:
    try:
      proc.wait(timeout=_TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def _tail(text: str, lines: int = 20) -> str:
  return "\n".join(text.splitlines()[-lines:])


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n")[0], usage="python -m unet_jax.launch_local [options] -- TRAINER_ARGS..."
  )
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--local_devices", type=int, default=1, help="simulated CPU devices per process")
  parser.add_argument("--port", type=int, default=0, help="coordinator port on localhost (0: pick a free one)")
  parser.add_argument("--module", default="unet_jax.train", help="the module every process runs")
  parser.add_argument("--timeout_s", type=float, default=None)
  parser.add_argument("trainer_args", nargs=argparse.REMAINDER, help="after --: passed to the module")
  args = parser.parse_args(argv)
  trainer_args = args.trainer_args[1:] if args.trainer_args[:1] == ["--"] else args.trainer_args
  results = launch(
    [sys.executable, "-m", args.module, *trainer_args],
    num_processes=args.num_processes,
    local_devices=args.local_devices,
    port=args.port,
    timeout_s=args.timeout_s,
  )
  failed = [r for r in results if r.returncode != 0]
  for r in failed:
    print(f"process {r.process_id} exited with {r.returncode}", file=sys.stderr)
  return (failed[0].returncode if failed[0].returncode > 0 else 1) if failed else 0


if __name__ == "__main__":
  sys.exit(main())
