"""A training command with a fault injected into its checkpoint writes:
`python fault_worker.py FAULT STEP -- IIET ARGS...`.

FAULT is one of
  commit_hangs      step STEP's checkpoint is written in full to Orbax's
                    temporary directory, then its commit (the rename to the
                    step's name) never happens; `<workdir>/commit_hangs`
                    appears then, for the test to SIGKILL this process.
  disk_fills        once every checkpoint before step STEP is complete, a
                    file `filler` takes all free space of the checkpoint
                    directory's file system (a small tmpfs in the test), so
                    step STEP's writes fail with ENOSPC.
  file_size_limit   as disk_fills, but no file may grow past 64 KiB
                    (RLIMIT_FSIZE, with SIGXFSZ ignored, so a write past it
                    fails with EFBIG); step STEP's state file is larger.
  none              no fault (the rerun, with this process's settings).

The rest of the arguments run as `iiet ARGS...` in this process, so the run
and its errors are the command line's own.
"""

from __future__ import annotations

import os
import resource
import runpy
import signal
import sys
import time

import jax

fault, step = sys.argv[1], int(sys.argv[2])
assert sys.argv[3] == "--"
args = sys.argv[4:]
workdir = next(a.split("=", 1)[1] for a in args if a.startswith("--workdir="))
# The test process's settings (conftest.py), so losses compare bit for bit.
jax.config.update("jax_default_matmul_precision", "highest")

from iiet_jax import checkpoint as ckpt_lib  # noqa: E402

if fault == "commit_hangs":
  from orbax.checkpoint._src.path import atomicity

  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def hang_at_commit(self):
    # The step directory (not one of its items) is the last to be renamed.
    if self.get_final().name == str(step):
      with open(os.path.join(workdir, "commit_hangs"), "w") as f:
        f.write(str(self.get()))
      while True:
        time.sleep(1)
    return await finalize(self)

  atomicity.AtomicRenameTemporaryPath.finalize = hang_at_commit
elif fault in ("disk_fills", "file_size_limit"):
  save = ckpt_lib.Checkpoints.save

  def fill(directory):
    fd = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
      while os.write(fd, b"\0" * 4096):
        pass
    except OSError:  # ENOSPC: the disk is full now
      pass
    finally:
      os.close(fd)

  def save_then_limit(self, at, *rest, **kwargs):
    if at == step:
      self.wait()  # the steps before are complete and intact
      if fault == "disk_fills":
        fill(self.directory)
      else:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    return save(self, at, *rest, **kwargs)

  ckpt_lib.Checkpoints.save = save_then_limit
elif fault != "none":
  sys.exit(f"unknown fault {fault!r}")

sys.argv = ["iiet"] + args
runpy.run_module("iiet_jax.main", run_name="__main__", alter_sys=True)
