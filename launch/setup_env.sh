# Sourced by launch/local.sh and .ci/run: makes ./.venv with the project and
# its test extras installed, reinstalling only when pyproject.toml changes.
# Needs only python3 (>= 3.11) and pip on the machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IIET_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "iiet_jax needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1)." >&2
  echo "Set PYTHON=/path/to/python3.11 and run again." >&2
  exit 1
fi
# libtpu (the `tpu` extra) lets `python -m iiet_jax.aot` compile for TPU
# topologies on this host; PyPI has it for x86_64 Linux only.
if [ -z "${IIET_EXTRAS:-}" ]; then
  IIET_EXTRAS=test,torch,plot
  [ "$(uname -sm)" = "Linux x86_64" ] && IIET_EXTRAS=test,torch,plot,tpu
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
STAMP="$VENV/.iiet_installed"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)-$IIET_EXTRAS"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "Installing iiet_jax and its dependencies into $VENV ..."
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$IIET_EXTRAS]"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
