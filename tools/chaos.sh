#!/usr/bin/env bash
# Runs the chaos driver (tests/chaos) against the dev stack in SOPHIA_STATE_DIR:
# `make chaos` starts one of its own through tools/with-dev-stack.sh, and
# tools/stack-checks.sh runs a short round (CHAOS_SECONDS=30) in `make test`.
# The driver reaches the local AWS the way the functions do (AWS_ENDPOINT_URL,
# the stack's dev.env).
set -euo pipefail
cd "$(dirname "$0")/.."
state_dir=${SOPHIA_STATE_DIR:?run it through tools/with-dev-stack.sh (make chaos)}
aws=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["aws"])' "$state_dir/stack.json")
set -a
# shellcheck disable=SC1091
. "$state_dir/dev.env"
set +a
export AWS_ENDPOINT_URL=$aws AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
  AWS_EC2_METADATA_DISABLED=true
exec target/debug/chaos --state-dir "$state_dir" --seconds "${CHAOS_SECONDS:-180}" \
  --report "${CHAOS_REPORT:-target/chaos-report.txt}"
