# Sourced by scripts/run, scripts/test and scripts/bench: make .venv if missing, install into it.
# usage: ensure_venv EXTRAS   (EXTRAS like "" or "[test]")
ensure_venv() {
  local extras="$1" root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  local python="${PYTHON:-python3}"
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "jidocoder needs Python 3.11 or newer (tried: $python)" >&2
    return 1
  fi
  if [ ! -x "$root/.venv/bin/python" ]; then
    "$python" -m venv "$root/.venv" || return 1
  fi
  local stamp="$root/.venv/.installed$extras"
  if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    "$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root$extras" || return 1
    touch "$stamp"
  fi
  # An editable install is not byte-compiled, and with PYTHONDONTWRITEBYTECODE set (as in CI
  # sandboxes) nothing ever writes the .pyc files: every daemon start then compiled the whole
  # package again (~30 ms of ~190 ms), which an installed wheel never does. Cheap when current.
  "$root/.venv/bin/python" -m compileall -q "$root/jidocoder" >/dev/null || return 1
}
