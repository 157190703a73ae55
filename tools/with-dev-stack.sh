#!/usr/bin/env bash
# Runs a command against a dev stack of its own, started and stopped without a
# terminal: `tools/with-dev-stack.sh make api-fuzz`. What `make test` uses for
# the checks that need the whole system (API fuzzing, the smoke journey, the
# browser test, the short chaos run).
#
# The stack runs on its own ports and state directory, so a `make dev` of yours
# can keep running: SOPHIA_PORT 9100, SOPHIA_AWS_PORT 5155, SOPHIA_SIM_PORTS
# "8201 8202", SOPHIA_MCP_PORT 3902, SOPHIA_CODEDEPLOY_PORT 3912, SOPHIA_TRACES_PORT 4319, SOPHIA_STATE_DIR target/test-stack (override any of them). Rate
# limits are raised (test traffic comes from one principal at machine speed).
# The command sees SOPHIA_STATE_DIR and SOPHIA_BASE. Afterwards every part of the
# stack is stopped, and it is an error if a port is still taken.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

export SOPHIA_PORT=${SOPHIA_PORT:-9100}
export SOPHIA_AWS_PORT=${SOPHIA_AWS_PORT:-5155}
export SOPHIA_SIM_PORTS=${SOPHIA_SIM_PORTS:-"8201 8202"}
export SOPHIA_MCP_PORT=${SOPHIA_MCP_PORT:-3902}
export SOPHIA_CODEDEPLOY_PORT=${SOPHIA_CODEDEPLOY_PORT:-3912}
export SOPHIA_TRACES_PORT=${SOPHIA_TRACES_PORT:-4319}
export SOPHIA_STATE_DIR=${SOPHIA_STATE_DIR:-$root/target/test-stack}
export SOPHIA_STACK=${SOPHIA_STACK:-sophia-test}
export RATE_LIMIT_PRINCIPAL_PER_MIN=${RATE_LIMIT_PRINCIPAL_PER_MIN:-60000}
export RATE_LIMIT_PRINCIPAL_BURST=${RATE_LIMIT_PRINCIPAL_BURST:-6000}
export RATE_LIMIT_IP_PER_MIN=${RATE_LIMIT_IP_PER_MIN:-60000}
export RATE_LIMIT_IP_BURST=${RATE_LIMIT_IP_BURST:-6000}
# Answers whose function died before billing them are billed by the sweep after
# a minute here, not 16 (the chaos round checks nothing stays owed).
export SWEEP_UNBILLED_AFTER_SECS=${SWEEP_UNBILLED_AFTER_SECS:-60}
export SOPHIA_BASE=http://127.0.0.1:$SOPHIA_PORT
log=$SOPHIA_STATE_DIR/dev.log
ready_within=${SOPHIA_READY_WITHIN_SECS:-900}

rm -rf "$SOPHIA_STATE_DIR"
mkdir -p "$SOPHIA_STATE_DIR"
echo "==> starting a dev stack on $SOPHIA_BASE (log: ${log#"$root"/})"
setsid tools/dev.sh >"$log" 2>&1 &
dev_pid=$!

ports() { echo "$SOPHIA_PORT $SOPHIA_AWS_PORT $SOPHIA_SIM_PORTS $SOPHIA_MCP_PORT $SOPHIA_CODEDEPLOY_PORT $SOPHIA_TRACES_PORT"; }
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop() {
  trap '' INT TERM
  if kill -0 "$dev_pid" 2>/dev/null; then
    echo "==> stopping the dev stack"
    kill -TERM "$dev_pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$dev_pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.3; done
    if kill -0 "$dev_pid" 2>/dev/null; then
      echo "the dev stack did not stop within 30 s; killing its process group" >&2
      kill -KILL -- "-$dev_pid" 2>/dev/null || true
    fi
  fi
  wait "$dev_pid" 2>/dev/null || true
  local left=""
  for port in $(ports); do port_in_use "$port" && left+=" $port"; done
  if [ -n "$left" ]; then
    echo "ports still taken after the stack stopped:$left" >&2
    return 1
  fi
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM

deadline=$((SECONDS + ready_within))
until [ -f "$SOPHIA_STATE_DIR/stack.json" ]; do
  if ! kill -0 "$dev_pid" 2>/dev/null; then
    tail -n 30 "$log" >&2
    echo "the dev stack exited during start-up (log: $log)" >&2
    exit 1
  fi
  if [ $SECONDS -ge $deadline ]; then
    tail -n 30 "$log" >&2
    stop || true
    echo "the dev stack was not ready within $ready_within s" >&2
    exit 1
  fi
  sleep 1
done
echo "==> dev stack ready after ${SECONDS} s; running: $*"
status=0
"$@" || status=$?
if [ "$status" -ne 0 ]; then
  # What the functions said when something went wrong: panics, cargo lambda's
  # own errors (an invocation it answered 500) and error-level log lines.
  echo "==> the command failed; errors in the functions' log (${SOPHIA_STATE_DIR#"$root"/}/watch.log):" >&2
  grep -a -E "panicked|ERROR|WARN|\"level\":\"(ERROR|WARN)\"" "$SOPHIA_STATE_DIR/watch.log" 2>/dev/null \
    | grep -a -v '"status":[1-4][0-9][0-9]' | grep -a -v 'AWS_LAMBDA_MAX_CONCURRENCY' | cut -c1-400 | tail -n 60 >&2 || true
fi
stop || status=$((status == 0 ? 1 : status))
exit "$status"
