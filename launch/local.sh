#!/usr/bin/env bash
# The main job on the embedded default: the tiny IIET on CPU.
#   bash launch/local.sh [--config=configs/lm.py:model=NAME,size=SIZE] [--config.KEY=VALUE ...]
# First run installs everything into ./.venv (about a minute).
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
# A CPU run: keeps JAX from probing for TPUs (libtpu is installed for the
# AOT check). Set JAX_PLATFORMS yourself to run on an accelerator.
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
if [[ " $* " != *" --config="* ]]; then
  set -- --config=configs/lm.py:model=iiet,size=tiny "$@"
fi
exec python -m iiet_jax.main "$@"
