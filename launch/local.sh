#!/usr/bin/env bash
# The main job on the embedded default: the tiny two-stage IIET on CPU.
#   bash launch/local.sh [--workdir=DIR] [--config=configs/lm.py:model=NAME,size=SIZE] [--config.KEY=VALUE ...]
# First run installs everything into ./.venv (about a minute). The run lives
# in --workdir (default runs/tiny); running again there resumes it.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
# A CPU run: keeps JAX from probing for TPUs (libtpu is installed for the
# AOT check). Set JAX_PLATFORMS yourself to run on an accelerator.
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
if [[ " $* " != *" --config="* ]]; then
  set -- --config=configs/lm.py:model=iiet,size=tiny "$@"
fi
if [[ " $* " != *" --workdir="* ]]; then
  set -- --workdir=runs/tiny "$@"
fi
exec python -m iiet_jax.main train "$@"
