#!/usr/bin/env bash
# `make api-fuzz`: schemathesis (pinned in tools/requirements.txt) against the
# running dev stack, from its own OpenAPI document (GET /openapi.json), with an
# access token of a tenant of its own ("fuzz": every scope but `platform`, so it
# cannot change other tenants' quotas). Bounded in examples and time.
#
#   API_FUZZ_EXAMPLES (20)   test cases per operation and phase
#   API_FUZZ_SECONDS (150)   time budget of the whole run (fuzzing repeats until it is spent)
#   SOPHIA_STATE_DIR (.local) where the running stack keeps stack.json and dev.env
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
state_dir=${SOPHIA_STATE_DIR:-$root/.local}
if [ ! -f "$state_dir/stack.json" ]; then
  echo "no dev stack is running (no $state_dir/stack.json): start it with 'make dev' first" >&2
  exit 2
fi
base=$("$root/.venv/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["base"])' "$state_dir/stack.json")
aws=$("$root/.venv/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["aws"])' "$state_dir/stack.json")
# A fresh key every run: the fuzzer may revoke the key it found listed (it is an
# admin of its tenant), and the local AWS of a new stack starts empty anyway.
key_file=$state_dir/fuzz-api-key

(
  set -a; . "$state_dir/dev.env"; set +a
  AWS_ENDPOINT_URL=$aws AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
    AWS_EC2_METADATA_DISABLED=true "$root/target/debug/sophia-dev" bootstrap-key --tenant fuzz \
    --scopes chat,jobs,memory,tools,admin --out "$key_file"
)
token=$(curl -fsS -X POST "$base/v1/auth/token" -H 'content-type: application/json' \
  -d "{\"api_key\": \"$(cat "$key_file")\"}" \
  | "$root/.venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')

report_dir=$root/target/api-fuzz
mkdir -p "$report_dir"
echo "==> schemathesis against $base (report in ${report_dir#"$root"/})"
cd "$report_dir"
# One worker: `cargo lambda watch` runs each function as one instance with
# concurrency 1, so a second worker's request waits behind a slow one (the
# audit-chain verify reads every entry) and the emulator twice answered such a
# request with its own 500 before our function saw it. Lambda would scale out.
# It still happens now and then with one worker (always GET /v1/admin/audit so
# far); tools/api_fuzz_emulator_500.py tells those apart by the emulator's own
# problem type and replays the request against our function.
rm -f "$report_dir"/junit-*.xml
status=0
SCHEMATHESIS_HOOKS=api_fuzz_hooks PYTHONPATH="$root/tools" \
  "$root/.venv/bin/st" --config-file "$root/tools/schemathesis.toml" run "$base/openapi.json" --url "$base" \
  -H "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection,ignored_auth \
  --max-examples "${API_FUZZ_EXAMPLES:-20}" --max-time "${API_FUZZ_SECONDS:-150}" \
  --wait-for-schema 120 --workers 1 --request-timeout 30 --seed "${API_FUZZ_SEED:-20261201}" \
  --report junit --report-dir "$report_dir" --output-truncate true || status=$?
if [ "$status" -ne 0 ]; then
  report=$(ls -t "$report_dir"/junit-*.xml 2>/dev/null | head -n 1)
  if [ -n "$report" ] && "$root/.venv/bin/python" "$root/tools/api_fuzz_emulator_500.py" "$report" "$token"; then
    status=0
  fi
fi
exit "$status"
