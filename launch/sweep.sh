#!/usr/bin/env bash
# A sweep: one run per override dict of the config file's get_sweep().
#   bash launch/sweep.sh --config=FILE.py[:ARG] --workdir=ROOT [--sweep_dry_run] [--config.KEY=VALUE ...]
# Runs go one after another here, each in ROOT/<run name>, and a results
# table is printed at the end; --sweep_dry_run prints one command per run
# instead, to submit each as its own cluster job (launch/tpu_pod.sh,
# launch/gpu_cluster.sh).
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
exec python -m iiet_jax.main sweep "$@"
