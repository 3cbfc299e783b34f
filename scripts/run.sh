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

# -- stopping: nothing outlives `make run` ---------------------------------------------------
# Ctrl-C sends SIGINT to the whole foreground process group (make, this shell, the demo feed
# server); a SIGTERM to `make` reaches only this shell (the Makefile execs it, so no /bin/sh
# sits in between to die alone). Either way this shell stops everything it started, within
# about 10 s, and exits 130 (SIGINT), 143 (SIGTERM) or 129 (SIGHUP). It does not `exec dg
# dev`: Dagster does not stop its own tree on SIGTERM (the code server ignores SIGTERM for
# minutes, and run workers outlive a killed parent), while SIGINT to all of it at once works.
DEV_PID=""   # dg dev, leader of its own process group (see the end of this script)
DEMO_PID=""  # the demo feed server
GEN_PID=""   # the demo generator, while it runs

# Process groups of $1 and of all its descendants: the model-step worker of
# TWIML_COMPUTE=subprocess runs in a session of its own.
tree_groups() {
  ps -e -o pid=,ppid=,pgid= | awk -v root="$1" '
    { parent[$1] = $2; group[$1] = $3 }
    END {
      for (p in parent) {
        q = p
        while (q > 1 && q != root) q = parent[q]  # up to root, or to init: not ours
        if (q == root) print group[p]
      }
    }' | sort -u
}

# Whether a process other than a zombie is left in any of these process groups.
groups_alive() {
  ps -e -o pgid=,stat= |
    awk -v want=" $* " 'index(want, " " $1 " ") && $2 !~ /^Z/ { n++ } END { exit !n }'
}

stop_all() {
  trap '' INT TERM HUP  # a second Ctrl-C does not cut the clean-up short
  if [ -n "$DEV_PID" ]; then
    local groups
    groups="$DEV_PID $(tree_groups "$DEV_PID" | tr "\n" " ")"  # before exits re-parent anything
    echo "==> stopping Dagster (SIGINT, then SIGKILL after 10 s)" >&2
    for g in $groups; do kill -INT -- "-$g" 2>/dev/null || true; done
    local deadline=$((SECONDS + 10))  # a clock: each ps takes a while on a busy machine
    while [ "$SECONDS" -lt "$deadline" ] && groups_alive $groups; do
      sleep 0.2
    done
    for g in $groups; do kill -KILL -- "-$g" 2>/dev/null || true; done
  fi
  for pid in $GEN_PID $DEMO_PID; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all; exit 129' HUP

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
  # In the background, so that a signal does not wait for it (bash runs traps only between
  # foreground commands).
  python -m twiml_assets.demo.feed_server generate --dir "$DEMO_DIR" &
  GEN_PID=$!
  wait "$GEN_PID"
  GEN_PID=""
  # stop_all stops the server; --parent-pid also ends it should this shell be SIGKILLed.
  python -m twiml_assets.demo.feed_server serve --dir "$DEMO_DIR" --port "$DEMO_PORT" \
    --initial 3 --release-every "${DEMO_RELEASE_EVERY:-240}" --parent-pid $$ &
  DEMO_PID=$!
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
# `set -m` (job control) starts dg dev in a process group of its own, so that stop_all can
# signal all of Dagster at once (webserver, daemon, code server and its gRPC child, run
# workers) and nothing else, and with SIGINT not ignored (a shell without job control
# ignores it in background jobs; Dagster then ignores SIGTERM too, which it maps to SIGINT).
set -m
dg dev --host "$HOST" --port "$PORT" &
DEV_PID=$!
set +m
status=0
wait "$DEV_PID" || status=$?  # a trapped signal ends the wait at once and runs stop_all
stop_all                      # dg dev ended on its own: its leftovers and the demo server too
exit "$status"
