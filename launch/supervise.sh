# Sourced by launch/tpu_pod.sh: its `supervise` ACTION (documented there).
# Uses tpu_pod.sh's TPU, ZONE, GCLOUD, RUN, TRAIN, ssh_on, steps, start.
#
# One loop, one decision per poll, from two observations:
#   the queued resource's state   (gcloud ... queued-resources describe)
#   the run on the workers        (one ssh: alive / exit N / dead / fresh)
# so a supervisor started again picks up wherever the last one was.

SUPERVISE_LOG=""

say() {  # a timestamped line, on the screen and in the supervise log
  local line
  line="$(date -u +%Y-%m-%dT%H:%M:%SZ) supervise: $*"
  echo "$line"
  echo "$line" >> "$SUPERVISE_LOG"
}

qr_state() {  # the queued resource's state; empty when there is none
  gcloud compute tpus queued-resources describe "$TPU" "${GCLOUD[@]}" \
      --format='value(state.state)' 2>/dev/null || true
}

qr_create() {
  local spot=()
  (( SPOT )) && spot=(--spot)
  say "creating queued resource $TPU ($ACCELERATOR, runtime $RUNTIME${spot:+, spot})"
  gcloud compute tpus queued-resources create "$TPU" --node-id="$TPU" \
      "${GCLOUD[@]}" --accelerator-type="$ACCELERATOR" \
      --runtime-version="$RUNTIME" ${spot[@]+"${spot[@]}"} >&2
}

qr_delete() {
  say "deleting queued resource $TPU"
  gcloud compute tpus queued-resources delete "$TPU" "${GCLOUD[@]}" \
      --force --quiet >&2 || true
}

# The run on every worker, one word each: alive, exit N, dead (started,
# gone without an exit code: killed or its VM restarted) or fresh (never
# started on this slice). Empty when the workers cannot be reached.
run_state() {
  ssh_on all "$(steps \
      "if $ALIVE; then echo alive" \
      "elif [ -f $EXIT ]; then echo exit \$(cat $EXIT)" \
      "elif [ -f $PID ]; then echo dead" \
      "else echo fresh; fi")" 2>/dev/null | grep -E '^(alive|exit [0-9]+|dead|fresh)$' || true
}

# Python run on worker 0 with the workdir as its argument (worker 0 reads
# gs:// as the trainer does); prints its output.
on_workdir() {
  ssh_on 0 "cd ~/iiet_jax && .venv/bin/python -c $(printf '%q' "$1") $(printf '%q' "$WORKDIR")" \
      2>/dev/null || true
}

# Whether summary.json in the workdir says the run reached total_steps.
run_complete() {
  on_workdir "import json, sys; from etils import epath; p = epath.Path(sys.argv[1]) / 'summary.json'; s = json.loads(p.read_text()) if p.exists() else {}; print('complete' if s and s['steps'] >= s['total_steps'] and not s['preempted'] else 'incomplete')" |
      grep -qx complete
}

# The last step the run logged (its goodput ledger), 0 before the first.
run_step() {
  local step
  step="$(on_workdir "import json, sys; from etils import epath; p = epath.Path(sys.argv[1]) / 'goodput.json'; print(json.loads(p.read_text())['last_step'] if p.exists() else 0)" | tail -n 1)"
  [[ "$step" =~ ^[0-9]+$ ]] && echo "$step" || echo 0
}

supervise() {
  check_train_args
  mkdir -p "$ROOT/iiet_runs"
  SUPERVISE_LOG="$ROOT/iiet_runs/$RUN.supervise.log"
  local poll="${IIET_SUPERVISE_POLL:-60}" first="${IIET_SUPERVISE_BACKOFF:-60}"
  local pause="$first" tries=0 state run last="" step=0 failed_at=-1
  say "supervising run $RUN on $TPU (zone $ZONE), workdir $WORKDIR; up to $RETRIES retries"
  retry() {  # retry REASON: count it, give up past --retries, else pause
    failed_at="$step"
    tries=$((tries + 1))
    if (( tries > RETRIES )); then
      say "giving up after $RETRIES retries ($1); the slice is left as it is"
      return 1
    fi
    say "retry $tries of $RETRIES in ${pause}s: $1"
    sleep "$pause"
    pause="$(awk -v p="$pause" 'BEGIN { p *= 2; print (p > 3600 ? 3600 : p) }')"
  }
  while :; do
    state="$(qr_state)"
    case "$state" in
      "")
        qr_create ;;
      ACTIVE)
        run="$(run_state)"
        case "$run" in
          *dead*)
            say "a worker's trainer died without an exit code (worker lost)"
            qr_delete
            retry "worker lost" || return 1 ;;
          *alive*)
            [[ "$last" == alive ]] || say "run $RUN is running; watching"
            step="$(run_step)"
            # Trained past the step of the last failure: the tries so far
            # were not a crash loop, so the count (and pause) start again.
            if (( tries > 0 && step > failed_at )); then
              say "run $RUN trains again (step $step); retry count reset"
              tries=0 pause="$first"
            fi ;;
          fresh*)
            say "starting run $RUN on the slice"
            start >&2 || say "start failed; trying again at the next poll" ;;
          exit\ *)
            local code="${run%%$'\n'*}"
            code="${code#exit }"
            case "$code" in
              0)
                if run_complete; then
                  say "run $RUN reached total_steps (summary.json); done"
                  return 0
                fi
                say "the trainer exited 0 but summary.json does not say complete"
                retry "incomplete run" || return 1
                start >&2 || true ;;
              2|3)
                say "the trainer exited $code ($( ((code == 2)) && echo bad input || echo diverged)): not retried; see ~/iiet_runs/$RUN.log on the workers"
                return "$code" ;;
              75)
                say "the trainer stopped after saving (exit 75: SIGTERM); starting it again"
                start >&2 || true ;;
              *)
                say "the trainer exited $code"
                retry "trainer exit $code" || return 1
                start >&2 || true ;;
            esac ;;
          *)
            say "the workers do not answer" ;;
        esac
        last="${run%%$'\n'*}"; last="${last%% *}" ;;
      SUSPENDED|SUSPENDING|FAILED)
        say "queued resource $TPU is $state (preempted or failed)"
        qr_delete
        retry "slice $state" || return 1 ;;
      *)
        [[ "$last" == "$state" ]] || say "queued resource $TPU is $state; waiting"
        last="$state" ;;
    esac
    sleep "$poll"
  done
}
