#!/usr/bin/env bash
# `make run`: the Dagster UI (webserver) and daemon on the TWIML feed.
# `make run DEMO=1`: the same, fully offline, on a generated demo feed served from
# 127.0.0.1 (three episodes at once, a fourth a few minutes later).
#
# Settings (environment): DAGSTER_HOME (default .dagster_home), TWIML_STORAGE_ROOT
# (default data, or data-demo with DEMO=1), TWIML_FEED_URL, PORT (UI, default 3000),
# DEMO_PORT (demo feed, default 8765); see twiml_assets/definitions.py for the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="${VENV:-.venv}"
PATH="$ROOT/$VENV/bin:$PATH"
PORT="${PORT:-3000}"
HOST="${HOST:-127.0.0.1}"

export DAGSTER_HOME="${DAGSTER_HOME:-$ROOT/.dagster_home}"
mkdir -p "$DAGSTER_HOME"
cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"

if [ "${DEMO:-}" = "1" ] || [ "${DEMO:-}" = "true" ]; then
  DEMO_PORT="${DEMO_PORT:-8765}"
  DEMO_DIR="${DEMO_DIR:-$ROOT/.demo_feed}"
  export TWIML_STORAGE_ROOT="${TWIML_STORAGE_ROOT:-$ROOT/data-demo}"
  export TWIML_FEED_URL="http://127.0.0.1:${DEMO_PORT}/feed.xml"
  export TWIML_REFERENCES_DIR="${TWIML_REFERENCES_DIR:-$DEMO_DIR/references}"
  export TWIML_SENSOR_INTERVAL="${TWIML_SENSOR_INTERVAL:-15}"
  echo "==> demo feed: generating episodes in $DEMO_DIR (espeak-ng, first time only)"
  python -m twiml_assets.demo.feed_server generate --dir "$DEMO_DIR"
  # The server exits with this process: after `exec`, $$ is dg dev's pid.
  python -m twiml_assets.demo.feed_server serve --dir "$DEMO_DIR" --port "$DEMO_PORT" \
    --initial 3 --release-every "${DEMO_RELEASE_EVERY:-240}" --parent-pid $$ &
  for _ in $(seq 1 50); do
    python - "$TWIML_FEED_URL" <<'PY' && break
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=1).read()
except Exception:
    raise SystemExit(1)
PY
    sleep 0.2
  done
  echo "==> offline demo: feed $TWIML_FEED_URL, outputs in $TWIML_STORAGE_ROOT"
else
  export TWIML_FEED_URL="${TWIML_FEED_URL:-https://feeds.megaphone.fm/MLN2155636147}"
  echo "==> feed $TWIML_FEED_URL, outputs in ${TWIML_STORAGE_ROOT:-data}"
fi

# The gpu pool's limit: how many model steps run at once. 1 for the machine's own GPU (or
# CPU); with TWIML_COMPUTE=modal or k8s, the number of remote GPUs you allow.
# Dagster reads .env for the code location; this shell does not, so look there too.
GPU_WORKERS="${TWIML_GPU_WORKERS:-}"
if [ -z "$GPU_WORKERS" ] && [ -f .env ]; then
  GPU_WORKERS="$(sed -n 's/^TWIML_GPU_WORKERS=\([0-9]*\).*/\1/p' .env | tail -1)"
fi
dagster instance concurrency set gpu "${GPU_WORKERS:-1}" >/dev/null 2>&1 || true

echo "==> Dagster UI: http://${HOST}:${PORT}  (sensor 'episode_feed_sensor' starts on its own)"
exec dg dev --host "$HOST" --port "$PORT"
