#!/usr/bin/env python3
"""After the smoke journey on a dev stack: its job is one trace across processes.

The smoke journey submits a job through api-jobs; the event source hands it to
worker-inference (another process under cargo lambda watch), which calls a
fleet simulator. Every function exports its spans to the stack's trace
receiver (`sophia-dev traces`), which shows each trace as a tree at `/`. This
check reads that page and fails unless one trace holds api-jobs' request, the
worker's run of the job under it, and the fleet attempt under that.
"""
import os
import sys
import time
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('SOPHIA_TRACES_PORT', '4318')}/?limit=1000"


def depth(line: str) -> int:
    return (len(line) - len(line.lstrip(" "))) // 2


def job_trace(page: str) -> list[str] | None:
    for block in page.split("\n\n"):
        lines = block.splitlines()
        chain = []
        for wanted in ("api-jobs · POST /v1/jobs", "worker-inference · job", "worker-inference · fleet attempt"):
            found = [line for line in lines if line.strip().startswith(wanted)
                     and (not chain or depth(line) == depth(chain[-1]) + 1)]
            if not found:
                break
            chain.append(found[0])
        if len(chain) == 3:
            return chain
    return None


deadline = time.monotonic() + 30
page = ""
while time.monotonic() < deadline:
    with urllib.request.urlopen(url, timeout=5) as answer:
        page = answer.read().decode()
    chain = job_trace(page)
    if chain:
        print("  one trace from api-jobs through the queue to the fleet:")
        for line in chain:
            print("   ", line.rstrip()[:140])
        sys.exit(0)
    time.sleep(1)
print(f"no trace holds api-jobs -> worker-inference job -> fleet attempt; {url} shows:\n{page[:4000]}", file=sys.stderr)
sys.exit(1)
