"""Both CodeDeploy hooks against a whole dev stack (run by tools/stack-checks.sh).

Invokes each hook through `cargo lambda watch`'s Lambda Invoke API with its
CodeDeploy sample event, as CodeDeploy would: deploy-pre-traffic invokes every
function of the stack the same way; deploy-post-traffic walks the smoke
journey through the stack's API with an API key it creates and revokes. Both
report to the CodeDeploy stand-in. Checks: each verdict is Succeeded with
everything passed, and the stand-in received exactly one status per hook
execution, for the sample's deployment.
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
    call(f"{standin}/_standin/reset", b"")
    problems = []
    expected_calls = []
    for hook, passed in [("deploy-pre-traffic", lambda v: v.get("checks", 0) >= 17 and not v.get("failed")),
                         ("deploy-post-traffic", lambda v: v.get("steps") == 13 and not v.get("failure"))]:
        event = (ROOT / f"events/{hook}/hook.json").read_bytes()
        verdict = call(f"{base}/2015-03-31/functions/{hook}/invocations", event, timeout=300)
        if not isinstance(verdict, dict) or verdict.get("status") != "Succeeded" or not passed(verdict):
            problems.append(f"{hook}: not a clean Succeeded: {json.dumps(verdict)[:2000]}")
        else:
            what = f"{verdict['checks']} checks" if "checks" in verdict else f"{verdict['steps']} smoke steps"
            print(f"  {hook}: {what} passed; Succeeded reported")
        sample = json.loads(event)
        expected_calls.append({"deploymentId": sample["DeploymentId"],
                               "lifecycleEventHookExecutionId": sample["LifecycleEventHookExecutionId"],
                               "status": "Succeeded"})
    calls = call(f"{standin}/_standin/calls")
    if calls != expected_calls:
        problems.append(f"CodeDeploy was told {calls}, expected exactly {expected_calls}")
    for problem in problems:
        print(f"  FAIL {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
