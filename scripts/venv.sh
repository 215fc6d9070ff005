# Sourced by scripts/demo and scripts/test: create or reuse .venv and install the package into it.
# Needs only python3 (3.11 or newer) and PyPI. Set PYTHON to choose the interpreter.

PYTHON=${PYTHON:-python3}
VENV_PY=.venv/bin/python

ensure_venv() {
    # $1: what to install, editable: ".[arrow]" (demo) or ".[test]" (test)
    if [ ! -x "$VENV_PY" ]; then
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || { echo "$0: $PYTHON is older than 3.11; set PYTHON=python3.11" >&2; exit 1; }
        # Some distributions ship python3 without ensurepip: then the venv gets no pip of its own.
        "$PYTHON" -m venv .venv 2>/dev/null || { rm -rf .venv; "$PYTHON" -m venv --without-pip .venv; }
    fi
    local pip=("$VENV_PY" -m pip)
    "$VENV_PY" -m pip --version >/dev/null 2>&1 || pip=("$PYTHON" -m pip --python "$VENV_PY")
    "${pip[@]}" install --quiet --disable-pip-version-check -e "$1"
}
