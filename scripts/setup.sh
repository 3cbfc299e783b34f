#!/usr/bin/env bash
# One-time, idempotent set-up for a fresh machine: system packages, the virtual
# environment with the locked Python stack (uv.lock), and the offline model weights.
# `scripts/setup.sh --lock` (make lock) first re-resolves uv.lock to the newest versions that
# pyproject.toml allows.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
# The Python stack is installed from uv.lock (exact versions, hashes, every transitive
# dependency) by uv. Refresh the lock after changing pyproject.toml: `make lock`.
UV_VERSION="0.13.8"
PYTHON_VERSION="3.11"

need_apt=()
for bin in ffmpeg espeak-ng sox; do
  command -v "$bin" >/dev/null 2>&1 || need_apt+=("$bin")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing system packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    ffmpeg espeak-ng sox libsndfile1 >/dev/null
fi

# Chromaprint for the audio fingerprints that link uploads to feed episodes
# (twiml_assets/audio/fingerprint.py loads libchromaprint1 through pyacoustid; fpcalc comes along).
if ! command -v fpcalc >/dev/null 2>&1; then
  echo "==> installing libchromaprint-tools (audio fingerprints)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    libchromaprint-tools >/dev/null
fi

# Headless browser for the web app's browser test: Playwright drives Debian's chromium
# (tests/test_web_browser.py); `playwright install` is never needed.
if ! command -v chromium >/dev/null 2>&1; then
  echo "==> installing chromium (browser test of the web app)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core >/dev/null
fi

# PostgreSQL server binaries for the production-instance tests (tests/postgres_server.py
# starts a throwaway server with initdb/pg_ctl). Debian keeps them in
# /usr/lib/postgresql/<version>/bin, off PATH; no cluster of the package is used.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "==> installing postgresql (server binaries for the PostgreSQL instance tests)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    postgresql >/dev/null
fi

# podman and mmdebstrap: the deploy images are built and run here (tests/test_images.py,
# bench/images.sh; tests/image_stack.py says how without a registry or `podman run`).
if ! command -v podman >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1; then
  echo "==> installing podman and mmdebstrap (the deploy images' tests)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    podman mmdebstrap >/dev/null
fi

# uv itself: the one on PATH, else the pinned release from PyPI into .tools/ (pip --target
# works on Debian's externally managed python3 too).
UV="$(command -v uv || true)"
if [ -z "$UV" ]; then
  UV=".tools/uv/bin/uv"
  if [ ! -x "$UV" ]; then
    echo "==> installing uv $UV_VERSION into .tools/uv"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
      --target .tools/uv "uv==$UV_VERSION" \
      || { echo "setup: uv is needed: install it (pip install uv, or Debian's python3-pip first), then run again" >&2; exit 1; }
  fi
fi
export UV_PROJECT_ENVIRONMENT="$VENV"

# Python 3.11: one on this machine (PATH, pyenv, uv's own), else uv downloads one; where
# neither works, stop now with one line rather than deep inside the install.
if ! PY311="$("$UV" python find "$PYTHON_VERSION" 2>/dev/null)"; then
  echo "==> no Python $PYTHON_VERSION found; asking uv to install one"
  "$UV" python install "$PYTHON_VERSION" >/dev/null 2>&1 \
    && PY311="$("$UV" python find "$PYTHON_VERSION")" \
    || { echo "setup: Python $PYTHON_VERSION is needed: install it (apt-get install python3.11, pyenv install 3.11 or uv python install 3.11), then run again" >&2; exit 1; }
fi

# Exactly the locked set (removes what the lock does not list); a second run installs nothing.
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "==> $VENV is not Python $PYTHON_VERSION: recreating it"
  rm -rf "$VENV"
fi
if [ "${1:-}" = "--lock" ]; then
  echo "==> re-resolving uv.lock (commit it with pyproject.toml)"
  "$UV" lock --upgrade --python "$PY311"
fi
# --locked: a uv.lock that no longer matches pyproject.toml is an error (run `make lock`).
"$UV" sync --locked --extra test --python "$PY311" --quiet || {
  echo "setup: installing uv.lock failed (see above); if pyproject.toml changed, run: make lock" >&2
  exit 1
}

"$VENV/bin/python" scripts/fetch_models.py
