#!/usr/bin/env bash
# One-time, idempotent set-up for a fresh machine: system packages, the virtual
# environment with the pinned torch/pyannote stack, and the offline model weights.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

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

stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "==> creating $VENV and installing the project (the torch stack takes a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

"$VENV/bin/python" scripts/fetch_models.py
