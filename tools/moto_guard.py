#!/usr/bin/env python3
"""Run a moto server on 127.0.0.1 for as long as its parent needs it.

Prints one line, `{"endpoint": "http://127.0.0.1:PORT"}`, once the server accepts
requests. With --until-stdin-closes it exits when its standard input reaches EOF:
the test harness keeps the pipe open for its lifetime, so the server dies with the
tests however they end (even on SIGKILL), and never outlives them.
"""

import argparse
import json
import signal
import sys
import threading

from moto.server import ThreadedMotoServer


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
