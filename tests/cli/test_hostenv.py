"""When the command line re-runs itself with glibc's huge-page tunable."""

from __future__ import annotations

import os
import subprocess
import sys

from iiet_jax import hostenv


def _thp(tmp_path, mode):
  path = tmp_path / "enabled"
  path.write_text({"madvise": "always [madvise] never\n",
                   "always": "[always] madvise never\n",
                   "never": "always madvise [never]\n"}[mode])
  return path


def test_sets_the_tunable_where_it_helps(tmp_path):
  env = hostenv.huge_pages_env({"PATH": "/bin"}, _thp(tmp_path, "madvise"),
                               ("glibc", "2.36"))
  assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  kept = hostenv.huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                                _thp(tmp_path, "madvise"), ("glibc", "2.36"))
  assert kept["GLIBC_TUNABLES"] == ("glibc.malloc.arena_max=2:"
                                    "glibc.malloc.hugetlb=1")


def test_leaves_the_environment_alone_otherwise(tmp_path):
  madvise = _thp(tmp_path, "madvise")
  cases = [
      ({}, _thp(tmp_path, "always"), ("glibc", "2.36")),
      ({}, _thp(tmp_path, "never"), ("glibc", "2.36")),
      ({}, madvise, ("glibc", "2.31")),          # no such tunable yet
      ({}, madvise, ("", "")),                   # musl, macOS
      ({}, tmp_path / "missing", ("glibc", "2.36")),
      ({"IIET_HUGE_PAGES": "0"}, madvise, ("glibc", "2.36")),
      ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, madvise,
       ("glibc", "2.36")),
  ]
  for environ, thp, libc in cases:
    assert hostenv.huge_pages_env(environ, thp, libc) is None, (environ, libc)


def test_entry_point_runs_with_the_tunable_when_it_helps():
  """The re-executed process sees the tunable exactly when the check says
  so (on this project's Linux hosts: yes)."""
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  code = ("import os; from iiet_jax import hostenv; "
          "hostenv.reexec_with_huge_pages(); "
          "print(os.environ.get('GLIBC_TUNABLES', ''))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True, env=env)
  helps = hostenv.huge_pages_env(env) is not None
  assert out.stdout.strip() == ("glibc.malloc.hugetlb=1" if helps else "")
