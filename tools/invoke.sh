#!/usr/bin/env bash
# `make invoke FN=… EVENT=…`: sends events/<FN>/<EVENT>.json to the running
# `make dev` with `cargo lambda invoke`. When a dev API key exists, a fresh access
# token is added to the event's headers (a sample file cannot hold a token that
# stays valid), so protected routes can be invoked too.
set -euo pipefail
cd "$(dirname "$0")/.."
fn=${1:?function}; event=${2:?event}
file="events/$fn/$event.json"
if [ ! -f "$file" ]; then
  echo "no such event: $file; available:" >&2
  ls "events/$fn" >&2 2>/dev/null || ls events >&2
  exit 2
fi
if [[ $fn == api-* ]] && [ -s .local/dev-api-key ] && token=$(make -s token 2>/dev/null); then
  python3 - "$file" "$token" > .local/invoke-event.json <<'PY'
import json, sys
event = json.load(open(sys.argv[1]))
event.setdefault("headers", {})["authorization"] = f"Bearer {sys.argv[2]}"
json.dump(event, sys.stdout)
PY
  file=.local/invoke-event.json
fi
exec cargo lambda invoke "$fn" --invoke-address 127.0.0.1 --invoke-port "${SOPHIA_PORT:-9000}" --data-file "$file"
