#!/usr/bin/env bash
# Runs the whole system locally: a local AWS (moto) provisioned from infra/, two
# fleet simulators and `cargo lambda watch` serving the real API paths.
# Everything it starts is stopped on Ctrl-C, on SIGTERM, or when the API itself dies.
# Stopping a simulator or the local AWS by hand leaves the rest running: /ready
# then answers 503 naming it.
#
# Ports (override with environment variables):
#   SOPHIA_PORT (9000)      the API: http://127.0.0.1:$SOPHIA_PORT/health
#   SOPHIA_AWS_PORT (5055)  the local AWS endpoint
#   SOPHIA_SIM_PORTS ("8101 8102")  fleet simulators: primary, secondary
#   SOPHIA_MCP_PORT (3901)  an upstream MCP server (server-everything from npm) to federate
#   SOPHIA_CODEDEPLOY_PORT (3911)  the stand-in for CodeDeploy's hook status call (the pre-traffic hook reports there)
#   SOPHIA_TRACES_PORT (4318)  the OTLP/HTTP trace receiver every function exports to (trees at http://127.0.0.1:4318/)
#   SOPHIA_STATE_DIR (.local)       logs, the env file, the dev API key, stack.json
#
# Stopping: Ctrl-C, or TERM/INT to this script, to `make dev`'s process group,
# or TERM to `make dev` alone. The first signal starts the cleanup; further ones
# are ignored until it is done (a second signal used to kill the cleanup
# half-way, leaving parts running). Each part gets TERM, then KILL after 10 s if
# it is still up. GNU make passes neither TERM nor INT on to its recipe when
# only make is signalled: on TERM it exits, so this script also stops when its
# parent is gone; on INT it keeps waiting for this script (it expects a
# terminal's Ctrl-C to have reached it too), so the stack keeps running and
# nothing is orphaned. `tools/stop-checks.sh` (in `make test`) tests each way.
# `.local/stack.json` exists exactly while the whole stack answers.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

api_port=${SOPHIA_PORT:-9000}
aws_port=${SOPHIA_AWS_PORT:-5055}
read -r -a sim_ports <<<"${SOPHIA_SIM_PORTS:-8101 8102}"
mcp_port=${SOPHIA_MCP_PORT:-3901}
codedeploy_port=${SOPHIA_CODEDEPLOY_PORT:-3911}
traces_port=${SOPHIA_TRACES_PORT:-4318}
sim_names=(primary secondary)
stack=${SOPHIA_STACK:-sophia-local}
state_dir=${SOPHIA_STATE_DIR:-$root/.local}
python=$root/.venv/bin/python
mkdir -p "$state_dir"

step() { printf '\n\033[1m[%s] %s\033[0m\n' "$1" "$2"; }
fail() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

[ -x "$python" ] || fail "the tool environment is missing: run 'make setup' first"

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$api_port" "$aws_port" "${sim_ports[@]}" "$mcp_port" "$codedeploy_port" "$traces_port"; do
  if port_in_use "$port"; then
    fail "port $port on 127.0.0.1 is in use (another 'make dev'?). Stop it or set SOPHIA_PORT / SOPHIA_AWS_PORT / SOPHIA_SIM_PORTS / SOPHIA_MCP_PORT / SOPHIA_CODEDEPLOY_PORT / SOPHIA_TRACES_PORT."
  fi
done

rm -f "$state_dir/parts"
pids=()
cleanup() {
  # Ignore further signals: a supervisor, make and the process group may all
  # send one, and the cleanup must run to its end.
  trap '' INT TERM
  trap - EXIT
  rm -f "$state_dir/stack.json"
  if [ ${#pids[@]} -gt 0 ]; then
    printf '\nstopping local stack...\n'
    # Each part runs in its own process group (setsid), so children go too.
    for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
    local deadline=$((SECONDS + 10))
    for pid in "${pids[@]}"; do
      while kill -0 -- "-$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
      kill -KILL -- "-$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    done
  fi
  printf 'stopped.\n'
}
# The signal traps run the cleanup themselves rather than `exit` into the EXIT
# trap. make passes TERM on to this script right after the group's own TERM; a
# second signal arriving between the first trap's `exit` and the EXIT trap's
# first line ran `exit` again inside bash's exit path, which then skipped the
# EXIT trap and left every part running (2 of 100 stops in a loop of TERMs to
# the group; CI saw it once). A signal arriving before stop_and_exit's first line
# only nests another stop_and_exit; once `trap '' INT TERM` has run, none does,
# so the cleanup runs once and to its end (0 of 450 in the same loop).
stop_and_exit() { # exit status
  trap '' INT TERM
  cleanup
  exit "$1"
}
trap cleanup EXIT
trap 'stop_and_exit 130' INT
trap 'stop_and_exit 143' TERM

start() { # name, log file, command...
  local name=$1 log=$2; shift 2
  setsid "$@" >"$log" 2>&1 &
  pids+=($!)
  printf '  %-18s pid %-7s log %s\n' "$name" "$!" "${log#"$root"/}"
  # Which process is which part, for tools that stop and restart one (make chaos).
  printf '%s %s\n' "$name" "$!" >> "$state_dir/parts"
}

# Whoever started this script (make, a supervisor, tools/with-dev-stack.sh)
# owns the stack: if it is gone (killed without passing a signal on), stop too.
# The parent pid, not whether it lives: a parent that died is a zombie (still
# there for kill -0) until its own parent reaps it, but this script is
# re-parented at once.
parent=$PPID
orphaned() {
  local now
  now=$(awk '/^PPid:/ {print $2}' "/proc/$$/status" 2>/dev/null || ps -o ppid= -p $$)
  [ "${now// /}" != "$parent" ]
}
stop_if_orphaned() {
  if orphaned; then
    printf 'the process that started this stack (pid %s) is gone: stopping\n' "$parent" >&2
    stop_and_exit 143
  fi
}

wait_for() { # url, what, seconds, log: waits for the URL while the last started part lives
  local url=$1 what=$2 deadline=$((SECONDS + $3)) log=$4 pid=${pids[-1]}
  until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
    stop_if_orphaned
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$log" >&2 || true
      fail "$what exited during start-up (log: ${log#"$root"/})"
    fi
    [ $SECONDS -lt $deadline ] || fail "$what did not come up at $url within $3 s (log: ${log#"$root"/})"
    sleep 0.3
  done
}

step 1/5 "building the fleet simulator and the functions (the first build takes a few minutes)"
cargo build --workspace --bins

step 2/5 "starting the local AWS on 127.0.0.1:$aws_port"
start local-aws "$state_dir/local-aws.log" "$python" tools/moto_guard.py --port "$aws_port"
wait_for "http://127.0.0.1:$aws_port/moto-api/" "the local AWS" 30 "$state_dir/local-aws.log"

step 3/5 "provisioning stack '$stack' from infra/template.yaml"
fleet=""
for i in "${!sim_ports[@]}"; do
  fleet+="${fleet:+,}${sim_names[$i]:-fleet$i}=http://127.0.0.1:${sim_ports[$i]}"
done
"$python" infra/provision.py --endpoint "http://127.0.0.1:$aws_port" --stack-name "$stack" \
  --param "FleetEndpoints=$fleet" \
  --param "CorsAllowedOrigins=http://localhost:3000,http://127.0.0.1:3000" \
  --env-file "$state_dir/dev.env"
# Locally, tenants may federate MCP servers on loopback (never in AWS: there
# 127.0.0.1:9001 is the Lambda runtime API).
echo 'MCP_ALLOW_PRIVATE_UPSTREAMS="true"' >> "$state_dir/dev.env"
# The pre-traffic hook invokes the functions through cargo lambda watch's Invoke
# API and reports to the CodeDeploy stand-in; the post-traffic hook walks the
# smoke journey through this stack's API (in AWS: the stack's ApiUrl).
printf 'LAMBDA_ENDPOINT_URL="http://127.0.0.1:%s"\nCODEDEPLOY_ENDPOINT_URL="http://127.0.0.1:%s"\n' \
  "$api_port" "$codedeploy_port" >> "$state_dir/dev.env"
sed -i "s|^SMOKE_BASE_URL=.*|SMOKE_BASE_URL=\"http://127.0.0.1:$api_port\"|" "$state_dir/dev.env"
# Every function exports its spans to the local trace receiver (in AWS: the
# ADOT collector layer, README "Traces").
printf 'OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:%s"\n' "$traces_port" >> "$state_dir/dev.env"

# The simulators accept only the fleet token the local Secrets Manager holds, so the
# functions' credential path (read, cache, re-read on 401) runs locally as in AWS.
fleet_token=$("$python" - "http://127.0.0.1:$aws_port" "$stack" <<'PY'
import sys, boto3
client = boto3.client("secretsmanager", endpoint_url=sys.argv[1], region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
print(client.get_secret_value(SecretId=f"{sys.argv[2]}/fleet-token", VersionStage="AWSCURRENT")["SecretString"])
PY
)
export FLEET_SIM_TOKEN=$fleet_token

# A dev tenant with an admin API key (every scope); `make token` trades it for
# an access token. The plaintext exists only in .local/dev-api-key (mode 0600).
(
  set -a; . "$state_dir/dev.env"; set +a
  AWS_ENDPOINT_URL="http://127.0.0.1:$aws_port" AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test \
    AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true \
    "$root/target/debug/sophia-dev" bootstrap-key --tenant dev --out "$state_dir/dev-api-key"
)

step 4/5 "starting ${#sim_ports[@]} fleet simulators, an upstream MCP server and a trace receiver"
for i in "${!sim_ports[@]}"; do
  name=${sim_names[$i]:-fleet$i}
  start "fleet-sim:$name" "$state_dir/fleet-sim-$name.log" \
    "$root/target/debug/fleet-sim" --port "${sim_ports[$i]}" --name "$name"
  wait_for "http://127.0.0.1:${sim_ports[$i]}/_sim/state" "fleet simulator $name" 15 "$state_dir/fleet-sim-$name.log"
done

everything=$root/tools/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js
[ -f "$everything" ] || fail "the upstream MCP server is missing: run 'make setup' (npm ci into tools/node)"
start "mcp-upstream" "$state_dir/mcp-upstream.log" env PORT="$mcp_port" node "$everything" streamableHttp
until port_in_use "$mcp_port"; do
  kill -0 "${pids[-1]}" 2>/dev/null || fail "the upstream MCP server exited (log: $state_dir/mcp-upstream.log)"
  sleep 0.2
done
# No local server implements CodeDeploy: a stand-in answers the hook's one call.
start "codedeploy-standin" "$state_dir/codedeploy-standin.log" "$python" tools/codedeploy_standin.py --port "$codedeploy_port"
until port_in_use "$codedeploy_port"; do
  kill -0 "${pids[-1]}" 2>/dev/null || fail "the CodeDeploy stand-in exited (log: $state_dir/codedeploy-standin.log)"
  sleep 0.2
done

# No collector or Jaeger package exists here: sophia-dev receives the spans and
# shows each trace as a tree.
start "trace-receiver" "$state_dir/trace-receiver.log" \
  "$root/target/debug/sophia-dev" traces --port "$traces_port" --log "$state_dir/traces.log"
until port_in_use "$traces_port"; do
  kill -0 "${pids[-1]}" 2>/dev/null || fail "the trace receiver exited (log: $state_dir/trace-receiver.log)"
  sleep 0.2
done

step 5/5 "starting cargo lambda watch on 127.0.0.1:$api_port"
export AWS_ENDPOINT_URL="http://127.0.0.1:$aws_port"
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true
export PATH="$root/.venv/bin:$PATH"
start "cargo-lambda-watch" "$state_dir/watch.log" \
  cargo lambda watch --invoke-address 127.0.0.1 --invoke-port "$api_port" --disable-cors \
  --env-file "$state_dir/dev.env"
watch_pid=${pids[-1]}
printf '  waiting for the first answer from /health (cargo lambda watch compiles the function)\n'
wait_for "http://127.0.0.1:$api_port/health" "the API (cargo lambda watch)" 600 "$state_dir/watch.log"
# Start every API function once (each answers 401/404 without credentials), so the
# first real request does not wait for its process.
for path in /v1/models /v1/auth/token /v1/admin/keys /v1/jobs/warm-up /v1/memory/warm-up /v1/dashboard /mcp; do
  until code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 120 -X POST "http://127.0.0.1:$api_port$path") \
      && [ "$code" -ge 400 ] && [ "$code" -lt 500 ]; do
    kill -0 "$watch_pid" 2>/dev/null || fail "cargo lambda watch exited; see $state_dir/watch.log"
    sleep 0.5
  done
done

# Lambda's SQS event sources (moto cannot run one): jobs submitted to the API run
# through worker-inference, pending memory vectors through worker-memory-embed,
# both under cargo lambda watch.
# CloudWatch's EMF extraction: the functions' request metrics reach the local
# CloudWatch, where job-slo-check (`make slo`) reads them.
start "emf-shipper" "$state_dir/emf-shipper.log" \
  "$root/target/debug/sophia-dev" ship-emf --log "$state_dir/watch.log"

jobs_queue=$(sed -n 's/^JOBS_QUEUE_URL="\(.*\)"$/\1/p' "$state_dir/dev.env")
start "jobs-event-source" "$state_dir/event-source.log" \
  "$root/target/debug/sophia-dev" event-source --queue-url "$jobs_queue" \
  --function worker-inference --invoke "http://127.0.0.1:$api_port"
memory_queue=$(sed -n 's/^MEMORY_EMBED_QUEUE_URL="\(.*\)"$/\1/p' "$state_dir/dev.env")
start "memory-event-source" "$state_dir/memory-event-source.log" \
  "$root/target/debug/sophia-dev" event-source --queue-url "$memory_queue" \
  --function worker-memory-embed --invoke "http://127.0.0.1:$api_port"

base="http://127.0.0.1:$api_port"
printf '{"base": "%s", "aws": "http://127.0.0.1:%s", "pid": %s, "state_dir": "%s"}\n' \
  "$base" "$aws_port" "$$" "$state_dir" > "$state_dir/stack.json"
cat <<EOF

Sophia Functions is running locally.

  API            $base   (one base URL; OpenAI clients use $base/v1; the contract: $base/openapi.json)
  dev API key    $(cat "$state_dir/dev-api-key")   (tenant 'dev', every scope; also in $state_dir/dev-api-key)
  local AWS      http://127.0.0.1:$aws_port   (stack '$stack'; env in $state_dir/dev.env)
  fleet          $(printf '%s ' "${fleet//,/  }")
  MCP            $base/mcp   (upstream to federate: http://127.0.0.1:$mcp_port/mcp, server-everything)
  deploy hook    make invoke FN=deploy-pre-traffic EVENT=hook   (reports to the CodeDeploy stand-in on :$codedeploy_port)
  traces         http://127.0.0.1:$traces_port/   (every function's spans as one tree per trace, newest first; one line per span in $state_dir/traces.log)
  logs           $state_dir/*.log

Try:
  curl -i $base/health
  curl -s $base/ready | python3 -m json.tool
  TOKEN=\$(make -s token)      # a fresh access token for the dev tenant
  curl -s $base/v1/chat/completions -H "authorization: Bearer \$TOKEN" -H 'content-type: application/json' \\
    -d '{"model":"sophia-small","messages":[{"role":"user","content":"hello Sophia"}]}'
  curl -sN $base/v1/chat/completions -H "authorization: Bearer \$TOKEN" -H 'content-type: application/json' \\
    -d '{"model":"sophia-small","stream":true,"messages":[{"role":"user","content":"stream to me"}]}'
  curl -s $base/v1/models -H "authorization: Bearer \$TOKEN"

  curl -si $base/v1/jobs -H "authorization: Bearer \$TOKEN" -H 'content-type: application/json' \\
    -H 'idempotency-key: my-first-job' -d '{"model":"sophia-small","messages":[{"role":"user","content":"later"}]}'
  curl -s $base/v1/jobs/<id from Location> -H "authorization: Bearer \$TOKEN"   # done within a second
  make sweep                  # run job-queue-sweep once (stranded and dead-lettered jobs)
  make slo                    # run job-slo-check once (burn rates from the requests above)
  make drift                  # run job-drift-detect once (live resources vs infra/template.yaml)

  curl -s -X PUT http://127.0.0.1:${sim_ports[1]:-${sim_ports[0]}}/_sim/fault -d '{"mode":"black_hole"}'   # break a simulator

  # Tools over MCP: register the upstream once, then call it (a 2025-06-18 call needs no _meta).
  curl -s -X PUT $base/v1/admin/mcp-servers/everything -H "authorization: Bearer \$TOKEN" -H 'content-type: application/json' \\
    -d '{"url":"http://127.0.0.1:$mcp_port/mcp","allowed_tools":["echo","get-sum"]}'
  curl -s $base/mcp -H "authorization: Bearer \$TOKEN" -H 'content-type: application/json' \\
    -H 'accept: application/json, text/event-stream' -H 'mcp-protocol-version: 2025-06-18' \\
    -d '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"everything__echo","arguments":{"message":"hi"}}}'

Ctrl-C stops everything.
EOF

# A stopped simulator or local AWS is a scenario to try (/ready then names it), so
# only the loss of the API itself (or of whoever started this) ends the session.
# `sleep & wait` rather than a plain sleep: a signal's trap runs at once.
while kill -0 "$watch_pid" 2>/dev/null; do
  stop_if_orphaned
  sleep 1 &
  wait $! || true
done
fail "cargo lambda watch exited; see $state_dir/watch.log"
