"""The pre-traffic hook against a whole dev stack (run by tools/stack-checks.sh).

Invokes deploy-pre-traffic through `cargo lambda watch`'s Lambda Invoke API
with its CodeDeploy sample event; the hook invokes every function of the stack
the same way, and reports its verdict to the CodeDeploy stand-in. Checks: the
verdict is Succeeded with every check passed, and the stand-in received
exactly one status, for the sample's deployment and hook execution.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def call(url: str, body: bytes | None = None, timeout: float = 30) -> object:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read() or b"null")


def main() -> int:
    base = os.environ["SOPHIA_BASE"]
    standin = f"http://127.0.0.1:{os.environ['SOPHIA_CODEDEPLOY_PORT']}"
    event = (ROOT / "events/deploy-pre-traffic/hook.json").read_bytes()
    call(f"{standin}/_standin/reset", b"")
    verdict = call(f"{base}/2015-03-31/functions/deploy-pre-traffic/invocations", event, timeout=300)
    calls = call(f"{standin}/_standin/calls")
    sample = json.loads(event)
    problems = []
    if not isinstance(verdict, dict) or verdict.get("status") != "Succeeded" or verdict.get("failed"):
        problems.append(f"the verdict is not a clean Succeeded: {json.dumps(verdict)[:2000]}")
    elif verdict.get("checks", 0) < 15:
        problems.append(f"only {verdict.get('checks')} checks ran")
    expected = [{"deploymentId": sample["DeploymentId"],
                 "lifecycleEventHookExecutionId": sample["LifecycleEventHookExecutionId"],
                 "status": "Succeeded"}]
    if calls != expected:
        problems.append(f"CodeDeploy was told {calls}, expected exactly {expected}")
    for problem in problems:
        print(f"  FAIL {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"  pre-traffic hook: {verdict['checks']} checks of every function passed; one Succeeded reported")
    return 0


if __name__ == "__main__":
    sys.exit(main())
