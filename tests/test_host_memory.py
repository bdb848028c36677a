"""The commands' restart with huge pages for large blocks: when it happens, what it keeps, and that the tunable it
sets gives a process huge pages where glibc and the kernel can; the trainer's reuse of freed blocks, and their
release, after every compile too."""

import json
import os
import subprocess
import sys
import types

import jax
import pytest

from unet_jax import host_memory


@pytest.mark.parametrize(
  ("environ", "glibc", "mode", "expected"),
  [
    ({}, (2, 36), "madvise", "glibc.malloc.hugetlb=1"),
    (
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
      (2, 35),
      "madvise",
      "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1",
    ),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), "madvise", None),  # The user's choice; also no loop.
    ({}, (2, 34), "madvise", None),  # No such tunable before glibc 2.35.
    ({}, None, "madvise", None),  # Another C library.
    ({}, (2, 36), "always", None),  # Every large block gets huge pages already.
    ({}, (2, 36), "never", None),
    ({}, (2, 36), None, None),  # No transparent huge pages in this kernel.
  ],
)
def test_a_restart_happens_only_where_it_changes_something(environ, glibc, mode, expected):
  assert host_memory.tunables_with_huge_pages(environ, glibc, mode) == expected


def test_thp_mode_reads_the_bracketed_choice(tmp_path, monkeypatch):
  mode_file = tmp_path / "enabled"
  monkeypatch.setattr(host_memory, "_THP_MODE_FILE", mode_file)
  assert host_memory.thp_mode() is None
  mode_file.write_text("always [madvise] never\n")
  assert host_memory.thp_mode() == "madvise"


def _environ_without_tunables() -> dict[str, str]:
  """This environment as a process started without GLIBC_TUNABLES sees it: 4 KiB pages for every block."""
  return {name: value for name, value in os.environ.items() if name != "GLIBC_TUNABLES"}


def _supported_tunables(environ: dict[str, str]) -> str:
  tunables = host_memory.tunables_with_huge_pages(environ, host_memory.glibc_version(), host_memory.thp_mode())
  if tunables is None:
    pytest.skip(f"no restart here: glibc {host_memory.glibc_version()}, THP mode {host_memory.thp_mode()}")
  return tunables


_TOUCH_A_LARGE_BLOCK = """
import ctypes, re
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 64 * 2**20  # glibc maps a block this large on its own, as it does XLA's activations.
ctypes.memset(libc.malloc(size), 1, size)  # Plain malloc: numpy would ask for huge pages itself.
rollup = open("/proc/self/smaps_rollup").read()
print(int(re.search(r"AnonHugePages:\\s+(\\d+) kB", rollup).group(1)) // 1024)
"""


def _huge_mib(environ: dict[str, str]) -> int:
  result = subprocess.run([sys.executable, "-c", _TOUCH_A_LARGE_BLOCK], env=environ, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  return int(result.stdout)


def test_the_tunable_gives_a_large_block_huge_pages():
  """What the restart is for: with the tunable a process's 64 MiB block gets huge pages (all of it on an idle machine;
  the kernel may find fewer free 2 MiB frames on a busy one), without it none."""
  environ = _environ_without_tunables()
  tunables = _supported_tunables(environ)
  with_tunable, without = _huge_mib({**environ, "GLIBC_TUNABLES": tunables}), _huge_mib(environ)
  assert with_tunable >= 2 and without < with_tunable, (with_tunable, without)


_FREE_AND_TOUCH_AGAIN = """
import ctypes, json, resource, sys
import jax
from unet_jax import host_memory
reused = host_memory.reuse_freed_blocks() if sys.argv[1] == "reuse" else None
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 * 2**20  # As large as a step's buffers: without the settings, glibc maps and unmaps it.

def rss_mib():
  return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024

def touch_and_free():
  block = libc.malloc(size)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  ctypes.memset(block, 1, size)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
  libc.free(block)
  return faults

touch_and_free()
faults, rss_freed = touch_and_free(), rss_mib()
host_memory.release_free_memory()
print(json.dumps({"reused": reused, "async": jax.config.values["jax_cpu_enable_async_dispatch"], "faults": faults,
                  "freed_mib": rss_freed - rss_mib()}))
"""


def _run_heap_script(script: str, how: str) -> dict:
  """The JSON line `script` prints, run as `python -c script how` ("reuse": with the trainer's heap settings)."""
  result = subprocess.run(
    [sys.executable, "-c", script, how], env=_environ_without_tunables(), capture_output=True, text=True
  )
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout.splitlines()[-1])


def test_freed_large_blocks_are_reused_then_released():
  """With the trainer's settings a freed 64 MiB block is the next one's memory (no page faults on touching it again),
  and stays the process's until `release_free_memory`; without them every block is faulted in afresh."""
  if host_memory.glibc_version() is None:
    pytest.skip("glibc's malloc only")
  reused, plain = _run_heap_script(_FREE_AND_TOUCH_AGAIN, "reuse"), _run_heap_script(_FREE_AND_TOUCH_AGAIN, "plain")
  pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
  assert reused["reused"] and reused["async"] is False and plain["async"] is True
  assert reused["faults"] < pages // 16, reused  # Its pages were kept.
  assert plain["faults"] > pages // 2, plain  # Mapped afresh: a fault a page.
  assert reused["freed_mib"] >= 48, reused  # Held until released, then returned.


_SPLIT_HEAP = """
import ctypes, json, sys
from unet_jax import host_memory
reused = host_memory.reuse_freed_blocks() if sys.argv[1] == "reuse" else None
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 * 2**20

def rss_mib():
  return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024

block = libc.malloc(size)  # A step's buffers,
ctypes.memset(block, 1, size)
fence = libc.malloc(2**20)  # and a block another thread allocated above them while they were alive.
libc.free(block)
heap = host_memory.StepHeap(size)
releases, released_mib = [], []
for step in range(3):
  if step == 2:
    libc.free(fence)  # The heap's top holds a step's buffers again.
  before = rss_mib()
  heap.before_step()
  releases.append(heap.releases)
  released_mib.append(before - rss_mib())
print(json.dumps({"releases": releases, "released_mib": released_mib}))
"""


def test_a_split_heap_is_released_before_the_step_and_the_one_after():
  """`StepHeap`: a step's freed buffers cut off from the heap's top (where the next step's could not go) are handed
  back before that step, and the heap once more before the step after; a whole heap is left alone, as is a heap
  that does not keep freed blocks."""
  if host_memory.glibc_version() is None:
    pytest.skip("glibc's malloc only")
  split = _run_heap_script(_SPLIT_HEAP, "reuse")
  assert split["releases"] == [1, 2, 2], split
  assert split["released_mib"][0] >= 48, split  # The freed 64 MiB block's pages.
  assert _run_heap_script(_SPLIT_HEAP, "plain")["releases"] == [0, 0, 0]


def test_a_step_heap_takes_its_size_from_the_program_or_never_releases():
  """`StepHeap.of`: the temporaries XLA counts for a compiled program; a backend that counts none (memory_analysis()
  is None) gives a heap that never releases, rather than an error."""
  outer_sorted = jax.jit(lambda x: jax.numpy.sort(x[:, None] * x[None, :], axis=0).sum())  # A 1 MiB temporary.
  compiled = outer_sorted.lower(jax.numpy.ones(512)).compile()
  assert host_memory.StepHeap.of(compiled).nbytes == compiled.memory_analysis().temp_size_in_bytes > 0
  assert host_memory.StepHeap.of(types.SimpleNamespace(memory_analysis=lambda: None)).nbytes == 0


def test_under_another_c_library_nothing_changes(monkeypatch):
  """No glibc: the steps keep JAX's asynchronous dispatch, which only pays off with the heap settings."""
  monkeypatch.setattr(host_memory, "_libc", lambda: None)
  before = jax.config.values["jax_cpu_enable_async_dispatch"]
  assert host_memory.reuse_freed_blocks() is False
  assert jax.config.values["jax_cpu_enable_async_dispatch"] == before
  host_memory.release_free_memory()  # A no-op there, not an error.


_COMPILE_UNDER_A_COMMAND = """
import jax, numpy as np
from unet_jax import cli, host_memory

releases = []
host_memory.release_free_memory = lambda: releases.append(1)

def main(argv):
  step = jax.jit(lambda x: x * 3 + 1)
  x = np.arange(5, dtype=np.float32)
  step(x)
  compiled = len(releases)
  step(x)
  print(compiled, len(releases))

cli.run(main, name="tool")
"""


def test_a_command_releases_free_memory_after_each_compile_only():
  """Under `cli.run`, the compiler's working memory goes back once a program has compiled, before it runs; a call
  that needs no compile releases nothing."""
  result = subprocess.run([sys.executable, "-c", _COMPILE_UNDER_A_COMMAND], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  compiled, after_second_call = map(int, result.stdout.split())
  assert compiled >= 1 and after_second_call == compiled, result.stdout
