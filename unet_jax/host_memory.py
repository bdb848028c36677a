"""Transparent huge pages for the host's large buffers: each command restarts itself once with glibc's tunable.

XLA:CPU allocates a program's buffers on every call, and glibc maps large blocks (all over 32 MiB) from the kernel
and unmaps them when they are freed, so every train or inference step touches its activations afresh, one 4 KiB page
fault at a time.
glibc 2.35+ with `glibc.malloc.hugetlb=1` marks those blocks for transparent huge pages (2 MiB, 512 times fewer
faults) where the kernel gives them on request (THP mode "madvise"). glibc reads its tunables when a process starts,
so the package's commands (`python -m unet_jax.<command>`) re-execute themselves with it, before any heavy import.
A GLIBC_TUNABLES that already names the tunable (any value: `glibc.malloc.hugetlb=0` opts out) is left as it is.
"""

import os
import pathlib
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb"
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
