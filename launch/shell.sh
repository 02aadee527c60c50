# Sourced by the cluster launchers: echo-then-run, and --dry-run printing.

# One command as a shell would read it back (single quotes where needed, a
# --flag= prefix left outside them), so --dry-run output can be pasted into a
# terminal.
shell_words() {
  local out="" w flag
  for w in "$@"; do
    if [[ "$w" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+="$w "; continue; fi
    flag=""
    [[ "$w" =~ ^--[A-Za-z0-9_.-]+= ]] && flag="${BASH_REMATCH[0]}"
    w="${w#"$flag"}"
    out+="$flag'${w//\'/\'\\\'\'}' "
  done
  printf '%s' "${out% }"
}

DRY_RUN=0
# With DRY_RUN=1 prints the command; otherwise echoes it to stderr and runs it.
run() {
  if (( DRY_RUN )); then echo "+ $(shell_words "$@")"; return; fi
  echo "+ $(shell_words "$@")" >&2
  "$@"
}
