#!/usr/bin/env python3
"""Run a moto server on 127.0.0.1 for as long as its parent needs it.

Prints one line, `{"endpoint": "http://127.0.0.1:PORT"}`, once the server accepts
requests. With --until-stdin-closes it exits when its standard input reaches EOF:
the test harness keeps the pipe open for its lifetime, so the server dies with the
tests however they end (even on SIGKILL), and never outlives them.

DynamoDB requests are applied one at a time. moto's threaded server checks a
condition and then writes without a lock, so two concurrent conditional writes
(or transactions) to one item can both succeed: a job claimed twice, a bill added
twice. DynamoDB serializes writes to an item and makes transactions serializable;
one lock around moto's DynamoDB handler gives the local AWS that guarantee (it
costs little: moto's Python is serialized by the GIL anyway). Other services
keep their threads, so an SQS long poll never blocks a DynamoDB call.
"""

import argparse
import json
import signal
import sys
import threading

from moto.dynamodb.responses import DynamoHandler
from moto.server import ThreadedMotoServer

_DYNAMODB_LOCK = threading.Lock()
_call_dynamodb = DynamoHandler.call_action


def _serialized_call_action(self):  # type: ignore[no-untyped-def]
    with _DYNAMODB_LOCK:
        return _call_dynamodb(self)


DynamoHandler.call_action = _serialized_call_action  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--until-stdin-closes", action="store_true")
    args = parser.parse_args()

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    print(json.dumps({"endpoint": f"http://{host}:{port}"}), flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    if args.until_stdin_closes:
        def watch_stdin() -> None:
            while sys.stdin.buffer.read(4096):
                pass
            done.set()
        threading.Thread(target=watch_stdin, daemon=True).start()
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
