#!/usr/bin/env bash
# The checks that need the whole system, run by `make test` inside
# tools/with-dev-stack.sh (which sets SOPHIA_STATE_DIR and SOPHIA_BASE).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> the deploy hooks: pre-traffic checks of every function, the post-traffic smoke journey"
.venv/bin/python tools/hook_check.py
echo "==> the smoke journey"
make -s smoke BASE="$SOPHIA_BASE"
echo "==> the smoke journey's job as one trace (the stack's trace receiver)"
.venv/bin/python tools/trace_check.py
echo "==> the dashboard page in Chromium"
node tools/node/dashboard_check.mjs
echo "==> API fuzzing (schemathesis)"
tools/api-fuzz.sh
echo "==> a short chaos round (make chaos runs the whole one)"
CHAOS_SECONDS=${CHAOS_SHORT_SECONDS:-30} CHAOS_REPORT=target/chaos-report-short.txt tools/chaos.sh
