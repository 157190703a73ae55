#!/usr/bin/env bash
# `make bench`: benchmarks whose figures are quoted in BENCHMARKS.md.
# Bounded: each benchmark has a fixed number of runs and stops by itself.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${BENCH_RUNS:-30}

functions=$(ls functions)
echo "==> building release binaries for this host (same code and profile as the arm64 zips; several minutes from a clean target/)"
# shellcheck disable=SC2046 # one -p per function
cargo build --release --locked -p bench -p fleet-sim $(printf -- '-p %s ' $functions)

echo
echo "==> cold start: api-health, $runs runs"
target/release/coldstart --binary target/release/api-health --event events/api-health/health.json \
  --runs "$runs" \
  --env STATE_TABLE=bench-state --env JOBS_QUEUE_URL=http://127.0.0.1:9/q \
  --env FLEET_ENDPOINTS=primary=http://127.0.0.1:9

echo
echo "==> cold start of every function against the local AWS, ${BENCH_COLD_RUNS:-10} runs each"
target/release/coldstarts --runs "${BENCH_COLD_RUNS:-10}"

echo
echo "==> api-chat: handler overhead and failover latency (its logs and EMF lines are discarded)"
target/release/chat --rounds "${BENCH_CHAT_ROUNDS:-2000}" --failover-requests "${BENCH_FAILOVER_REQUESTS:-200}" >/dev/null

echo
echo "==> worker-inference: throughput per instance and CPU time per job (logs discarded)"
target/release/jobs --jobs "${BENCH_JOBS:-300}" --latency-ms "${BENCH_JOB_LATENCY_MS:-50}" 2>/dev/null \
  | grep '^worker-inference:'

echo
echo "==> memory: store and recall latency for users with 1 000 and 10 000 memories, storage per memory"
target/release/memory --recalls "${BENCH_MEMORY_RECALLS:-200}" --cold-recalls "${BENCH_MEMORY_COLD:-5}" \
  --stores "${BENCH_MEMORY_STORES:-100}" 2>/dev/null | grep '^memory:'

echo
echo "==> api-mcp: gateway overhead of a built-in tool call, and of a federated call against server-everything"
target/release/mcp --calls "${BENCH_MCP_CALLS:-300}" 2>/dev/null | grep '^mcp:'

if ls target/lambda-arm64/*/bootstrap.zip >/dev/null 2>&1; then
  echo
  echo "==> arm64 zip sizes (from the last 'make build')"
  make --no-print-directory sizes
fi
