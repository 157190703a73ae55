#!/usr/bin/env bash
# `make stop-checks` (part of `make test`): `make dev` started without a
# terminal and stopped the ways a supervisor, a CI runner or `timeout` stop it
# leaves nothing behind: no process of the stack and no port taken.
#
# Each way starts its own `make dev` (own ports and state directory, so a
# `make dev` of yours can keep running), waits until the stack answers, sends
# the signal, and then checks:
#   - make exits within STOP_WITHIN_SECS (40: the stack's parts get 10 s each
#     to stop before KILL);
#   - no process still carries this stack's SOPHIA_STATE_DIR in its
#     environment (every part inherits it: moto, the simulators, the MCP server,
#     cargo lambda watch and the functions it started, the helpers);
#   - every port of the stack is free.
# TERM to dev.sh alone is what tools/with-dev-stack.sh does for every other
# stack check, and is checked there. INT to make alone is not a way to stop it:
# GNU make waits for its recipe without passing INT on (see tools/dev.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

export SOPHIA_PORT=${STOP_CHECK_PORT:-9300}
export SOPHIA_AWS_PORT=${STOP_CHECK_AWS_PORT:-5355}
export SOPHIA_SIM_PORTS=${STOP_CHECK_SIM_PORTS:-"8401 8402"}
export SOPHIA_MCP_PORT=${STOP_CHECK_MCP_PORT:-3904}
export SOPHIA_CODEDEPLOY_PORT=${STOP_CHECK_CODEDEPLOY_PORT:-3914}
export SOPHIA_TRACES_PORT=${STOP_CHECK_TRACES_PORT:-4321}
export SOPHIA_STACK=sophia-stop-check
state=$root/target/stop-stack
ready_within=${SOPHIA_READY_WITHIN_SECS:-900}
stop_within=${STOP_WITHIN_SECS:-40}
ports="$SOPHIA_PORT $SOPHIA_AWS_PORT $SOPHIA_SIM_PORTS $SOPHIA_MCP_PORT $SOPHIA_CODEDEPLOY_PORT $SOPHIA_TRACES_PORT"

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Processes whose environment names this stack's state directory (not this script's).
stack_pids() {
  local pid
  for environ in /proc/[0-9]*/environ; do
    pid=${environ#/proc/}
    pid=${pid%/environ}
    [ "$pid" = $$ ] && continue
    if { tr '\0' '\n' <"$environ"; } 2>/dev/null | grep -qx "SOPHIA_STATE_DIR=$state"; then
      echo "$pid"
    fi
  done
}
describe() { # pids: "pid command;" each
  for pid in "$@"; do printf '%s %s; ' "$pid" "$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | cut -c1-80)"; done
}

failures=0
check() { # name, signal, target: "group" (make's process group) or "make" (make alone)
  local name=$1 signal=$2 target=$3
  rm -rf "$state"
  mkdir -p "$state"
  local log=$root/target/stop-check-$name.log
  echo "==> $name: starting make dev (log: ${log#"$root"/})"
  # A command started with & by a script ignores INT, and an ignored signal
  # cannot be trapped again: give make (and so dev.sh) INT back, as a
  # supervisor's or a terminal's child has it.
  SOPHIA_STATE_DIR=$state setsid env --default-signal=INT make --no-print-directory dev >"$log" 2>&1 &
  local make_pid=$! started=$SECONDS
  until [ -f "$state/stack.json" ]; do
    if ! kill -0 "$make_pid" 2>/dev/null; then
      tail -n 20 "$log" >&2
      echo "$name: make dev exited during start-up" >&2
      return 1
    fi
    if [ $((SECONDS - started)) -ge "$ready_within" ]; then
      kill -KILL -- "-$make_pid" 2>/dev/null || true
      echo "$name: the stack was not ready within $ready_within s" >&2
      return 1
    fi
    sleep 1
  done
  echo "    ready after $((SECONDS - started)) s; sending $signal to $target"
  case $target in
    group) kill "-$signal" -- "-$make_pid" ;;
    make) kill "-$signal" "$make_pid" ;;
  esac
  local stopping=$SECONDS
  while kill -0 "$make_pid" 2>/dev/null && [ $((SECONDS - stopping)) -lt "$stop_within" ]; do sleep 0.5; done
  local problems=""
  if kill -0 "$make_pid" 2>/dev/null; then
    problems+=" make still running after $stop_within s;"
    kill -KILL -- "-$make_pid" 2>/dev/null || true
  fi
  wait "$make_pid" 2>/dev/null || true
  # The parts stop within 10 s each after make is gone when it did not wait for them.
  local left="" taken="" deadline=$((SECONDS + 15))
  while :; do
    left=$(stack_pids | tr '\n' ' ')
    left=${left% }
    taken=""
    for port in $ports; do port_in_use "$port" && taken+=" $port"; done
    [ -z "$left$taken" ] || [ $SECONDS -ge $deadline ] || { sleep 0.5; continue; }
    break
  done
  # shellcheck disable=SC2086 # one word per pid
  [ -z "$left" ] || problems+=" processes left: $(describe $left)"
  [ -z "$taken" ] || problems+=" ports still taken:$taken;"
  if [ -n "$problems" ]; then
    echo "$name: FAILED:$problems" >&2
    tail -n 15 "$log" >&2
    # Leave nothing for the next check or the next `make test`.
    for pid in $left; do kill -KILL "$pid" 2>/dev/null || true; done
    failures=$((failures + 1))
  else
    echo "    stopped after $((SECONDS - stopping)) s: no process and no port left"
  fi
}

check term-to-group TERM group
check int-to-group INT group
check term-to-make TERM make
rm -rf "$state"
if [ "$failures" -gt 0 ]; then
  echo "stop checks: $failures of 3 ways of stopping make dev left something behind" >&2
  exit 1
fi
echo "stop checks: every way of stopping make dev left nothing behind"
