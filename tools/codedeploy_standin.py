"""A local stand-in for one CodeDeploy call: PutLifecycleEventHookExecutionStatus.

No local AWS server implements CodeDeploy (moto has no lifecycle hook API), and
the pre-traffic hook's only CodeDeploy call is the report of its verdict. This
answers that call as CodeDeploy does (JSON 1.1, `X-Amz-Target`), refuses every
other operation, and records what it was told:

  POST /                 CodeDeploy_20141006.PutLifecycleEventHookExecutionStatus
  GET  /_standin/calls   every status received, in order (JSON)
  POST /_standin/reset   forget them

`--port 0` picks a free port; the port is printed on the first line of stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TARGET = "CodeDeploy_20141006.PutLifecycleEventHookExecutionStatus"
STATUSES = {"Pending", "InProgress", "Succeeded", "Failed", "Skipped", "Unknown"}
calls: list[dict] = []
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet: the recorded calls are the log
        pass

    def answer(self, status: int, body: dict | list) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/x-amz-json-1.1")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, kind: str, message: str) -> None:
        self.answer(400, {"__type": kind, "message": message})

    def do_GET(self) -> None:
        if self.path == "/_standin/calls":
            with lock:
                self.answer(200, list(calls))
        else:
            self.answer(404, {"message": "not found"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path == "/_standin/reset":
            with lock:
                calls.clear()
            self.answer(200, {})
            return
        target = self.headers.get("x-amz-target", "")
        if target != TARGET:
            self.error("UnknownOperationException", f"the stand-in serves only {TARGET}, not {target!r}")
            return
        try:
            request = json.loads(body)
        except ValueError:
            self.error("SerializationException", "the body is not JSON")
            return
        for field in ("deploymentId", "lifecycleEventHookExecutionId", "status"):
            if not request.get(field):
                self.error("InvalidInputException", f"{field} is required")
                return
        if request["status"] not in STATUSES:
            self.error("InvalidLifecycleEventHookExecutionStatusException", f"unknown status {request['status']}")
            return
        with lock:
            if any(c["lifecycleEventHookExecutionId"] == request["lifecycleEventHookExecutionId"] for c in calls):
                # CodeDeploy accepts one verdict per hook execution.
                self.error("LifecycleEventAlreadyCompletedException", "the lifecycle event is already completed")
                return
            calls.append({k: request[k] for k in ("deploymentId", "lifecycleEventHookExecutionId", "status")})
        self.answer(200, {"lifecycleEventHookExecutionId": request["lifecycleEventHookExecutionId"]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
