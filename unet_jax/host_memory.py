"""Transparent huge pages for the host's large buffers: each command restarts itself once with glibc's tunable.

XLA:CPU allocates a program's buffers on every call, and glibc maps large blocks (all over 32 MiB) from the kernel
and unmaps them when they are freed, so every train or inference step touches its activations afresh, one 4 KiB page
fault at a time.
glibc 2.35+ with `glibc.malloc.hugetlb=1` marks those blocks for transparent huge pages (2 MiB, 512 times fewer
faults) where the kernel gives them on request (THP mode "madvise"). glibc reads its tunables when a process starts,
so the package's commands (`python -m unet_jax.<command>`) re-execute themselves with it, before any heavy import.
A GLIBC_TUNABLES that already names the tunable (any value: `glibc.malloc.hugetlb=0` opts out) is left as it is.

Huge pages still leave the kernel to zero every step's fresh blocks. The trainer goes further on the CPU backend
(`reuse_freed_blocks`): each call runs on the calling thread, whose heap keeps the large blocks it frees, so the next
step's buffers are the pages the last step touched; `release_free_memory` hands freed pages back after an eval or a
save.
The heap can split: XLA's worker threads allocate blocks there too (36 MiB ones in the step), and one still alive
when the step's buffers are freed can leave no free block large enough for the next step's, which would then go
above, on fresh pages, one step's buffers more; `StepHeap` sees that before the step and hands the free pages back
first. Every command also hands the compiler's working memory back after each compile (`release_after_compiles`).
"""

import ctypes
import functools
import os
import pathlib
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb"
# mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# JAX's monitoring event for an XLA compile (or a persistent cache load), recorded when it ends, before the run.
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_reusing = False  # Whether reuse_freed_blocks has set this process's heap up.
_THP_MODE_FILE = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def glibc_version() -> tuple[int, ...] | None:
  """(2, 36) for glibc 2.36; None for any other C library."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (AttributeError, OSError, ValueError):  # Not a glibc system, or no such confstr name.
    return None
  return tuple(int(part) for part in version.split(".")[:2]) if name == "glibc" else None


def thp_mode() -> str | None:
  """The kernel's transparent huge page mode ("always", "madvise" or "never"); None where there is none."""
  try:
    text = _THP_MODE_FILE.read_text()
  except OSError:
    return None
  return text[text.index("[") + 1 : text.index("]")] if "[" in text else None


def tunables_with_huge_pages(environ: Mapping[str, str], glibc: tuple[int, ...] | None, mode: str | None) -> str | None:
  """The GLIBC_TUNABLES to restart with, or None where a restart would change nothing: not glibc 2.35+, the kernel
  gives huge pages to every block already ("always") or to none ("never"), or the tunable is set."""
  current = environ.get("GLIBC_TUNABLES", "")
  if glibc is None or glibc < (2, 35) or mode != "madvise" or TUNABLE in current:
    return None
  return f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"


def restart_with_huge_pages() -> None:
  """Re-executes this process (same interpreter, options and arguments) with huge pages for large blocks, where
  `tunables_with_huge_pages` says that changes something; otherwise returns. Call it before anything else runs."""
  tunables = tunables_with_huge_pages(os.environ, glibc_version(), thp_mode())
  if tunables is not None:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "GLIBC_TUNABLES": tunables})


def describe() -> str:
  """One line for a command's log: whether this process's large blocks get huge pages, and if not, why."""
  mode = thp_mode()
  if TUNABLE in os.environ.get("GLIBC_TUNABLES", ""):
    return f"GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']} (THP mode {mode})"
  if mode == "always":
    return "huge pages for every large block (THP mode always)"
  return f"4 KiB pages (glibc {glibc_version()}, THP mode {mode}): each step's fresh buffers fault page by page"


class _MallocInfo(ctypes.Structure):
  """glibc's struct mallinfo2 (2.33+): the heap's figures in bytes."""

  _fields_ = [
    (name, ctypes.c_size_t)
    for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
  ]


@functools.cache
def _libc() -> ctypes.CDLL | None:
  """This process's glibc, or None under any other C library (where the functions below change nothing); looked up
  once, as the trainer consults it before every step."""
  if not glibc_version():
    return None
  libc = ctypes.CDLL(None)
  if hasattr(libc, "mallinfo2"):
    libc.mallinfo2.restype = _MallocInfo
  return libc


def reuse_freed_blocks() -> bool:
  """Makes the CPU backend's steps reuse the host memory of the step before instead of faulting in fresh pages.

  The CPU client then runs each call on the calling thread (not asynchronously), so a step's temporary buffers come
  from that thread's heap, glibc's main arena, and at most one step's are alive; glibc keeps large blocks in that heap
  (no mmap for them, no trimming) rather than unmapping them when they are freed. Call it before JAX creates its CPU
  client (the first computation). Returns whether it did; under another C library it changes nothing.
  """
  libc = _libc()
  # -1 as the trim threshold is the largest size_t: the heap's top is never trimmed.
  if not (libc and libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, -1)):
    return False
  import jax  # Here, not at the top: the package's import must stay light for the restart above.

  global _reusing
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  _reusing = glibc_version() >= (2, 33)  # mallinfo2, for StepHeap.
  return True


class StepHeap:
  """Keeps a step's temporary buffers, `nbytes` a call, from adding to the heap where it has split.

  `before_step()`: where the top of the main arena cannot hold `nbytes` (the last step's buffers were split off it),
  the heap's free pages are handed back first, so that the step's fresh pages replace them instead of adding to
  them; and once more before the next step, whose buffers go back where the last step's could not. Otherwise (and
  unless `reuse_freed_blocks` set the heap up) it does nothing.
  """

  def __init__(self, nbytes: int):
    self.nbytes = nbytes
    self.releases = 0
    self._released_last = False

  @classmethod
  def of(cls, compiled) -> "StepHeap":
    """For a compiled program (`jax.stages.Compiled`): its temporaries a call, as XLA counts them; 0 where the backend
    does not say, and then it never releases."""
    return cls(getattr(compiled.memory_analysis(), "temp_size_in_bytes", 0))

  def before_step(self) -> None:
    libc = _libc()
    if not (_reusing and libc):
      return
    split = libc.mallinfo2().keepcost < self.nbytes
    if split or self._released_last:
      libc.malloc_trim(0)
      self.releases += 1
    self._released_last = split and not self._released_last


def release_free_memory() -> None:
  """Returns the heap's free pages to the kernel (glibc's malloc_trim): the compiler's working memory once a program
  has compiled, an eval's buffers, or what a split heap left behind."""
  libc = _libc()
  if libc:
    libc.malloc_trim(0)


@functools.cache
def release_after_compiles() -> None:
  """Releases free memory (`release_free_memory`) after every XLA compile of this process, before the program first
  runs: the compiler's freed working memory (0.3-0.8 GB for the U-Net's programs) would otherwise stay in glibc's
  arenas, under the program's own buffers at its peak. A listener on JAX's compile event; registered once."""
  import jax

  def listener(event: str, duration_secs: float, **kwargs) -> None:
    if event == _COMPILE_EVENT:
      release_free_memory()

  jax.monitoring.register_event_duration_secs_listener(listener)
