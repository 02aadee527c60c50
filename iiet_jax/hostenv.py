"""The process environment the command line re-runs itself with on CPU hosts.

XLA:CPU allocates its buffers afresh at every step, and glibc hands out large
ones as new `mmap` regions, so every 4 KiB page of every activation is
faulted in and zeroed by the kernel again at each step. With the glibc
tunable `glibc.malloc.hugetlb=1` malloc asks for transparent huge pages
instead (Linux with THP in `madvise` mode, glibc >= 2.35). Measured on this
project's 2-core CPU host, tiny IIET train step, XLA ops per step from
bench/profile_step.py: 837 ms -> 487 ms (the zero-filling of scan outputs
alone 121 ms -> 25 ms). The tunable is read only when a process starts, so
the `iiet` entry point re-executes itself once with it set.
`IIET_HUGE_PAGES=0` turns this off.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_pages_env(environ=os.environ, thp: Path = THP,
                   libc: tuple[str, str] | None = None) -> dict | None:
  """The environment to re-run with, or None when there is nothing to gain
  (not glibc >= 2.35, THP not in madvise mode, already set, or turned off)."""
  if environ.get("IIET_HUGE_PAGES", "1") == "0":
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables:
    return None
  name, version = libc or platform.libc_ver()
  try:
    major, minor = (int(x) for x in version.split(".")[:2])
  except ValueError:
    return None
  if name != "glibc" or (major, minor) < (2, 35):
    return None
  try:
    if "[madvise]" not in thp.read_text():
      return None  # [always] already uses huge pages; [never] has none
  except OSError:
    return None
  return dict(environ, GLIBC_TUNABLES=":".join(
      t for t in (tunables, TUNABLE) if t))


def reexec_with_huge_pages() -> None:
  """Replaces this process by itself with the tunable set, if it helps."""
  env = huge_pages_env()
  if env is not None and sys.platform == "linux":
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
