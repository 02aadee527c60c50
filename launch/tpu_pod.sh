#!/usr/bin/env bash
# A training run on every worker of a TPU VM pod, over gcloud.
#   launch/tpu_pod.sh [--dry-run] --tpu=NAME --zone=ZONE [--project=ID] [--run=RUN_NAME]
#                     [--worker=N] ACTION [-- TRAIN ARGS...]
#   launch/tpu_pod.sh --tpu=NAME --zone=ZONE --accelerator-type=TYPE [--spot]
#                     [--runtime-version=V] [--retries=N] supervise -- TRAIN ARGS...
# ACTION:
#   start   copy the committed tree (git archive HEAD) to all workers, install
#           it into ~/iiet_jax/.venv with the tpu extra, then start
#           `IIET_DISTRIBUTED=auto python -m iiet_jax.main TRAIN ARGS...` on all
#           workers at once, detached; log ~/iiet_runs/RUN_NAME.log, pid
#           ~/iiet_runs/RUN_NAME.pid. TRAIN ARGS need --config= and --workdir=,
#           a gs:// path that every worker sees; starting again resumes there.
#   stop    SIGTERM on all workers: the trainer checkpoints and exits 75
#           (docs/errors.md: stopped after saving; start again to resume)
#   logs    tail -f the log of worker 0, or of --worker=N
#   status  whether the run is alive on each worker, and its last log line
#   supervise  unattended: request the slice as a queued resource named NAME
#           (spot with --spot), start the run on it as `start` does, and watch
#           it; when the slice is preempted or a worker dies, delete it,
#           create it again and start again (the run resumes from its newest
#           checkpoint in the gs:// workdir), with a doubling pause between
#           tries; more than --retries (default 10) in a row without the run
#           training past the step of the last failure ends it. Stops when summary.json
#           says the run reached total_steps; never retries the trainer's
#           exit 2 (bad input) or 3 (diverged). A supervisor started again
#           adopts the slice and run it finds. Every action is logged with a
#           timestamp, also to iiet_runs/RUN_NAME.supervise.log here.
#           Polls every IIET_SUPERVISE_POLL seconds (60); the first pause is
#           IIET_SUPERVISE_BACKOFF seconds (60).
# --run names the run (default iiet); --dry-run prints each command, runs none.
# The workers need Python >= 3.11 as `python3`, or name it in IIET_TPU_PYTHON.
# Example:
#   launch/tpu_pod.sh --tpu=my-v5e-16 --zone=us-west4-a start -- \
#       --config=configs/lm.py:model=iiet,size=340m --workdir=gs://bucket/iiet340m
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
die() { echo "tpu_pod.sh: $1" >&2; usage >&2; exit 2; }

source "$ROOT/launch/shell.sh"  # shell_words, run, DRY_RUN

TPU="" ZONE="" PROJECT="" RUN="iiet" WORKER="" ACTION=""
ACCELERATOR="" RUNTIME="v2-alpha-tpuv5-lite" SPOT=0 RETRIES=10
TRAIN=()
while (( $# )); do
  case "$1" in
    --) shift; TRAIN=("$@"); break ;;
    --dry-run) DRY_RUN=1 ;;
    --tpu=*) TPU="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --run=*) RUN="${1#*=}" ;;
    --worker=*) WORKER="${1#*=}" ;;
    --accelerator-type=*) ACCELERATOR="${1#*=}" ;;
    --runtime-version=*) RUNTIME="${1#*=}" ;;
    --retries=*) RETRIES="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --tpu|--zone|--project|--run|--worker|--accelerator-type|\
    --runtime-version|--retries) die "$1 needs a value: $1=VALUE" ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) [[ -z "$ACTION" ]] || die "one ACTION only, got '$ACTION' and '$1'"
       ACTION="$1" ;;
  esac
  shift
done

[[ -n "$TPU" ]] || die "missing --tpu=NAME"
[[ -n "$ZONE" ]] || die "missing --zone=ZONE"
[[ -n "$ACTION" ]] || die "missing ACTION (start, stop, logs, status or supervise)"
case "$ACTION" in
  start|stop|logs|status|supervise) ;;
  *) die "unknown ACTION '$ACTION' (start, stop, logs, status or supervise)" ;;
esac
if [[ "$ACTION" == supervise ]]; then
  [[ -n "$ACCELERATOR" ]] || die "supervise needs --accelerator-type=TYPE (e.g. v5litepod-16)"
  [[ "$RETRIES" =~ ^[0-9]+$ ]] || die "--retries=$RETRIES is not a whole number"
  (( ! DRY_RUN )) || die "supervise watches a live slice; --dry-run is for start, stop, logs, status"
elif [[ -n "$ACCELERATOR$SPOT" && "$ACCELERATOR$SPOT" != 0 ]]; then
  die "--accelerator-type and --spot are for supervise"
fi
# The run name becomes part of remote paths, unquoted.
[[ "$RUN" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--run=$RUN: use letters, digits, _ . -"
if [[ -n "$WORKER" ]]; then
  [[ "$WORKER" =~ ^[0-9]+$ ]] || die "--worker=$WORKER is not a worker number"
  [[ "$ACTION" == logs || "$ACTION" == status ]] ||
    die "--worker=N is for logs and status; $ACTION acts on all workers"
fi
if [[ "$ACTION" != start && "$ACTION" != supervise && ${#TRAIN[@]} -gt 0 ]]; then
  die "train args after -- are for start, not $ACTION"
fi

GCLOUD=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || GCLOUD+=(--project="$PROJECT")
ssh_on() {  # ssh_on WORKERS COMMAND
  run gcloud compute tpus tpu-vm ssh "$TPU" "${GCLOUD[@]}" --worker="$1" \
      --command="$2"
}
# Remote shell steps, one per line here, one line ("; ") on the wire.
steps() {
  local out="$1" step
  shift
  for step in "$@"; do out+="; $step"; done
  printf '%s' "$out"
}
# Worker paths; ~ is left for the worker's shell to expand.
LOG="~/iiet_runs/$RUN.log"
PID="~/iiet_runs/$RUN.pid"
EXIT="~/iiet_runs/$RUN.exit"   # the trainer's exit code, once it has ended
ALIVE="[ -f $PID ] && kill -0 \"\$(cat $PID)\" 2>/dev/null"

WORKDIR=""
check_train_args() {
  local a workdir="" config=0
  for a in ${TRAIN[@]+"${TRAIN[@]}"}; do
    case "$a" in
      --workdir=?*) workdir="${a#*=}" ;;
      --config=?*) config=1 ;;
    esac
  done
  [[ -n "$workdir" ]] ||
    die "start needs --workdir=gs://... among the train args after --"
  (( config )) ||
    die "start needs --config=FILE among the train args after --"
  if [[ "$workdir" != gs://* ]]; then
    echo "tpu_pod.sh: warning: --workdir=$workdir is not gs://; every worker" \
         "must see the same directory" >&2
  fi
  WORKDIR="$workdir"
}

start() {
  check_train_args

  # Global: the EXIT trap runs after this function has returned.
  TARBALL="${TMPDIR:-/tmp}/iiet_jax-$RUN.tar.gz"
  if (( ! DRY_RUN )); then
    trap 'rm -f "$TARBALL"' EXIT
    if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]]; then
      echo "tpu_pod.sh: note: uncommitted changes stay here; the workers get" \
           "HEAD" >&2
    fi
  fi
  run git -C "$ROOT" archive --format=tar.gz -o "$TARBALL" HEAD
  run gcloud compute tpus tpu-vm scp "$TARBALL" "$TPU:iiet_jax-$RUN.tar.gz" \
      "${GCLOUD[@]}" --worker=all
  # Fresh code each start, but the venv is kept so reinstalls are quick.
  ssh_on all "$(steps "set -e" \
      "if $ALIVE; then echo \"\$(hostname): $RUN is already running; stop it first\" >&2; exit 1; fi" \
      "mkdir -p ~/iiet_jax ~/iiet_runs" \
      "find ~/iiet_jax -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +" \
      "tar -xzf ~/iiet_jax-$RUN.tar.gz -C ~/iiet_jax" \
      "rm ~/iiet_jax-$RUN.tar.gz" \
      "cd ~/iiet_jax" \
      "[ -x .venv/bin/python ] || { ${IIET_TPU_PYTHON:-python3} -m venv .venv; .venv/bin/pip install --quiet --upgrade pip; }" \
      ".venv/bin/pip install --quiet -e '.[tpu]'")"
  # A second ssh, so that no worker starts before all have installed: the
  # JAX processes wait for each other only for a limited time.
  local args
  args="$(printf '%q ' "${TRAIN[@]}")"
  # The trainer runs under a subshell that ignores SIGHUP (as nohup),
  # passes SIGTERM on (stop) and writes its exit code (supervise).
  ssh_on all "$(steps "set -e" "cd ~/iiet_jax" ". .venv/bin/activate" \
      "echo \"=== start \$(date -u) ===\" >> $LOG" "rm -f $EXIT" \
      "( set +e; trap '' HUP; trap 'kill -TERM \$child 2>/dev/null' TERM; IIET_DISTRIBUTED=auto python -m iiet_jax.main ${args% } & child=\$!; while :; do wait \$child; code=\$?; kill -0 \$child 2>/dev/null || break; done; echo \$code > $EXIT ) >> $LOG 2>&1 < /dev/null & echo \$! > $PID" \
      "echo \"\$(hostname): started pid \$(cat $PID), log $LOG\"")"
}

source "$ROOT/launch/supervise.sh"  # supervise

case "$ACTION" in
  start) start ;;
  supervise) supervise ;;
  stop) ssh_on all "$(steps \
      "if $ALIVE; then kill -TERM \"\$(cat $PID)\"; echo \"\$(hostname): sent SIGTERM to $RUN; it checkpoints and exits\"" \
      "else echo \"\$(hostname): $RUN is not running\"; fi")" ;;
  logs) ssh_on "${WORKER:-0}" "tail -n 100 -f $LOG" ;;
  status) ssh_on "${WORKER:-all}" "$(steps \
      "if $ALIVE; then echo \"\$(hostname): $RUN running, pid \$(cat $PID)\"" \
      "else echo \"\$(hostname): $RUN not running\"; fi" \
      "tail -n 1 $LOG 2>/dev/null || true")" ;;
esac
