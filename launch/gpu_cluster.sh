#!/usr/bin/env bash
# A training run over several GPU hosts, one process per host.
#   launch/gpu_cluster.sh [--dry-run] slurm --nodes=N --gpus-per-node=G [--partition=P]
#                         [--time=HH:MM:SS] [--run=NAME] -- TRAIN ARGS...
#   launch/gpu_cluster.sh [--dry-run] env --coordinator=HOST:PORT --num-processes=N
#                         --process-id=I -- TRAIN ARGS...
# slurm  writes iiet_runs/NAME.sbatch (run name default iiet) and submits it:
#        one srun task per node runs
#        `IIET_DISTRIBUTED=auto python -m iiet_jax.main TRAIN ARGS...` and
#        jax.distributed finds the other nodes from SLURM_*; log
#        iiet_runs/NAME-JOBID.log. Slurm sends SIGTERM 5 minutes before --time
#        runs out, so the trainer checkpoints; submit again to resume.
#        sbatch's own SBATCH_* variables (SBATCH_ACCOUNT, ...) still apply.
# env    runs this host's process with IIET_COORDINATOR, IIET_NUM_PROCESSES and
#        IIET_PROCESS_ID exported; start it on every host with its own
#        --process-id, process 0 on the coordinator's host.
# TRAIN ARGS need --config= and --workdir= (a directory every host sees).
# Paths (iiet_runs/, --config=, a relative --workdir=) are from the repository
# root. --dry-run prints each command, runs none.
# Install on every host (for slurm: one checkout on a shared file system) and
# activate the environment first; slurm jobs inherit it:
#   python3 -m venv .venv && .venv/bin/pip install -e '.[gpu]'   # jax[cuda12], pinned
#   source .venv/bin/activate
# Examples:
#   launch/gpu_cluster.sh slurm --nodes=4 --gpus-per-node=8 --time=24:00:00 -- \
#       --config=configs/lm.py:model=iiet,size=1.3b --workdir=/shared/runs/iiet1.3b
#   launch/gpu_cluster.sh env --coordinator=10.0.0.1:1234 --num-processes=2 \
#       --process-id=0 -- --config=configs/lm.py:model=iiet,size=340m --workdir=/shared/runs/a
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
die() { echo "gpu_cluster.sh: $1" >&2; usage >&2; exit 2; }

source "$ROOT/launch/shell.sh"  # shell_words, run, DRY_RUN

MODE="" NODES="" GPUS="" PARTITION="" TIME="" RUN="iiet"
COORDINATOR="" NUM_PROCESSES="" PROCESS_ID=""
GIVEN=()  # option names, to reject those of the other form
TRAIN=()
while (( $# )); do
  case "$1" in
    --) shift; TRAIN=("$@"); break ;;
    --dry-run) DRY_RUN=1 ;;
    --nodes=*) NODES="${1#*=}" ;;
    --gpus-per-node=*) GPUS="${1#*=}" ;;
    --partition=*) PARTITION="${1#*=}" ;;
    --time=*) TIME="${1#*=}" ;;
    --run=*) RUN="${1#*=}" ;;
    --coordinator=*) COORDINATOR="${1#*=}" ;;
    --num-processes=*) NUM_PROCESSES="${1#*=}" ;;
    --process-id=*) PROCESS_ID="${1#*=}" ;;
    --nodes|--gpus-per-node|--partition|--time|--run|--coordinator|\
    --num-processes|--process-id) die "$1 needs a value: $1=VALUE" ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) [[ -z "$MODE" ]] || die "one form only, got '$MODE' and '$1'"
       MODE="$1" ;;
  esac
  [[ "$1" != --*=* ]] || GIVEN+=("${1%%=*}")
  shift
done

[[ -n "$MODE" ]] || die "missing the form: slurm or env"
case "$MODE" in
  slurm) OWN="--nodes --gpus-per-node --partition --time --run" ;;
  env) OWN="--coordinator --num-processes --process-id" ;;
  *) die "unknown form '$MODE' (slurm or env)" ;;
esac
for o in ${GIVEN[@]+"${GIVEN[@]}"}; do
  [[ " $OWN " == *" $o "* ]] || die "$o is not an option of the $MODE form"
done

workdir="" config=0
for a in ${TRAIN[@]+"${TRAIN[@]}"}; do
  case "$a" in
    --workdir=?*) workdir="${a#*=}" ;;
    --config=?*) config=1 ;;
  esac
done
[[ -n "$workdir" ]] || die "$MODE needs --workdir=DIR among the train args after --"
(( config )) || die "$MODE needs --config=FILE among the train args after --"

positive() { [[ "$1" =~ ^[0-9]+$ ]] && (( 10#$1 >= 1 )); }

slurm() {
  [[ -n "$NODES" ]] || die "missing --nodes=N"
  [[ -n "$GPUS" ]] || die "missing --gpus-per-node=G"
  positive "$NODES" || die "--nodes=$NODES: need a whole number >= 1"
  positive "$GPUS" || die "--gpus-per-node=$GPUS: need a whole number >= 1"
  [[ -z "$PARTITION" || "$PARTITION" =~ ^[A-Za-z0-9_.,-]+$ ]] ||
    die "--partition=$PARTITION is not a partition name"
  [[ -z "$TIME" || "$TIME" =~ ^([0-9]+-)?[0-9]+:[0-5][0-9]:[0-5][0-9]$ ]] ||
    die "--time=$TIME: use HH:MM:SS"
  # The run name becomes part of #SBATCH paths, which take no quoting.
  [[ "$RUN" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--run=$RUN: use letters, digits, _ . -"
  [[ "$ROOT" != *[[:space:]]* ]] ||
    die "#SBATCH lines take no spaces: the checkout is at '$ROOT'"

  local script="iiet_runs/$RUN.sbatch" body
  body="#!/usr/bin/env bash
#SBATCH --job-name=$RUN
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPUS
${PARTITION:+#SBATCH --partition=$PARTITION
}${TIME:+#SBATCH --time=$TIME
}#SBATCH --output=iiet_runs/$RUN-%j.log
#SBATCH --chdir=$ROOT
#SBATCH --export=ALL
#SBATCH --signal=TERM@300
#SBATCH --requeue
# Written by launch/gpu_cluster.sh. The job inherits the submitting shell's
# environment (the activated venv). One process per node sees all its GPUs;
# jax.distributed finds the others from SLURM_*. SIGTERM 5 minutes before the
# time limit makes the trainer checkpoint and exit 75; the job then requeues
# itself and resumes.
set -euo pipefail
export IIET_DISTRIBUTED=auto
# Every process exits 75 after a SIGTERM save, so srun must not kill the
# others when the first one returns non-zero (they may still be finishing);
# after a crash, JAX's coordination service ends the others itself.
set +e
srun --kill-on-bad-exit=0 python -m iiet_jax.main $(printf '%q ' "${TRAIN[@]}")
code=\$?
set -e
# Exit codes: docs/errors.md. 75: stopped by SIGTERM after saving (the time
# limit, a preemption), so requeue the job, which resumes; anything else ends
# it (2 bad input, 3 diverged: a rerun would fail the same way).
if [[ \$code == 75 ]]; then scontrol requeue \"\$SLURM_JOB_ID\"; fi
exit \$code"
  body="${body% }"
  cd "$ROOT"
  run mkdir -p iiet_runs
  if (( DRY_RUN )); then
    echo "# $script"
    printf '%s\n' "$body"
  else
    printf '%s\n' "$body" > "$script"
  fi
  run sbatch "$script"
}

env_process() {
  [[ -n "$COORDINATOR" ]] || die "missing --coordinator=HOST:PORT"
  [[ -n "$NUM_PROCESSES" ]] || die "missing --num-processes=N"
  [[ -n "$PROCESS_ID" ]] || die "missing --process-id=I"
  [[ "$COORDINATOR" =~ ^[^:].*:([0-9]+)$ ]] &&
    (( 10#${BASH_REMATCH[1]} >= 1 && 10#${BASH_REMATCH[1]} <= 65535 )) ||
    die "--coordinator=$COORDINATOR needs HOST:PORT with a numeric port"
  positive "$NUM_PROCESSES" ||
    die "--num-processes=$NUM_PROCESSES: need a whole number >= 1"
  local n=$((10#$NUM_PROCESSES))
  [[ "$PROCESS_ID" =~ ^[0-9]+$ ]] && (( 10#$PROCESS_ID < n )) ||
    die "--process-id=$PROCESS_ID is not in 0..$((n - 1))"
  run cd "$ROOT"
  run export IIET_COORDINATOR="$COORDINATOR"
  run export IIET_NUM_PROCESSES="$n"
  run export IIET_PROCESS_ID="$((10#$PROCESS_ID))"
  if (( DRY_RUN )); then run python -m iiet_jax.main "${TRAIN[@]}"; return; fi
  echo "+ $(shell_words python -m iiet_jax.main "${TRAIN[@]}")" >&2
  # exec, so that a SIGTERM sent to this script reaches the trainer.
  exec python -m iiet_jax.main "${TRAIN[@]}"
}

case "$MODE" in
  slurm) slurm ;;
  env) env_process ;;
esac
