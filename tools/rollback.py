"""Roll every function of a stack back: `make rollback ENV=staging|prod`.

For each function `<stack>-*` with the alias `live`:
- a traffic shift in progress (the alias routes a share to a second version):
  all traffic back on the alias's main version, the one the shift started from;
- otherwise: the alias moves to the highest published version below its own.

CodeDeploy deployments of the stack still in progress are stopped first (with
their own automatic rollback), so they do not shift the aliases forward again.
Prints what it did for every function; exit 1 when a function could not be
rolled back (no earlier version, or an AWS error), 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

ALIAS = "live"
IN_FLIGHT = ["Created", "Queued", "InProgress", "Ready"]


def functions(lam: Any, stack: str) -> list[str]:
    names: list[str] = []
    for page in lam.get_paginator("list_functions").paginate():
        names += [f["FunctionName"] for f in page["Functions"] if f["FunctionName"].startswith(f"{stack}-")]
    return sorted(names)


def versions(lam: Any, function: str) -> list[int]:
    found: list[int] = []
    for page in lam.get_paginator("list_versions_by_function").paginate(FunctionName=function):
        found += [int(v["Version"]) for v in page["Versions"] if v["Version"].isdigit()]
    return sorted(found)


def stop_deployments(session: Any, stack: str, endpoint: str | None, say: Any) -> None:
    """Stops the stack's CodeDeploy deployments in flight (CodeDeploy rolls each back)."""
    try:
        cfn = session.client("cloudformation", endpoint_url=endpoint)
        resources = cfn.describe_stack_resources(StackName=stack)["StackResources"]
    except (ClientError, BotoCoreError) as error:
        say(f"  deployments in flight not checked: stack {stack} not readable ({error})")
        return
    deploy = session.client("codedeploy", endpoint_url=endpoint)
    for resource in resources:
        if resource["ResourceType"] != "AWS::CodeDeploy::Application":
            continue
        application = resource["PhysicalResourceId"]
        for deployment in deploy.list_deployments(applicationName=application,
                                                  includeOnlyStatuses=IN_FLIGHT)["deployments"]:
            deploy.stop_deployment(deploymentId=deployment, autoRollbackEnabled=True)
            say(f"  stopped deployment {deployment} of {application} (CodeDeploy rolls it back)")


def roll_back(lam: Any, function: str) -> tuple[bool, str]:
    try:
        alias = lam.get_alias(FunctionName=function, Name=ALIAS)
    except lam.exceptions.ResourceNotFoundException:
        return False, f"no alias `{ALIAS}`"
    current = alias["FunctionVersion"]
    weights = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
    if weights:
        shifting = ", ".join(f"v{v} {w:.0%}" for v, w in weights.items())
        target, what = current, f"shift stopped ({shifting}): all traffic on v{current}"
    else:
        earlier = [v for v in versions(lam, function) if current.isdigit() and v < int(current)]
        if not earlier:
            return False, f"no version earlier than v{current}: left as it is"
        target, what = str(earlier[-1]), f"v{current} -> v{earlier[-1]}"
    lam.update_alias(FunctionName=function, Name=ALIAS, FunctionVersion=target,
                     RoutingConfig={"AdditionalVersionWeights": {}})
    return True, what


def run(stack: str, region: str, endpoint: str | None, say: Any = print) -> int:
    session = boto3.session.Session(region_name=region)
    lam = session.client("lambda", endpoint_url=endpoint)
    say(f"==> rolling back stack {stack} ({region})")
    stop_deployments(session, stack, endpoint, say)
    names = functions(lam, stack)
    if not names:
        say(f"no function named {stack}-* in {region}")
        return 1
    failed = 0
    for name in names:
        try:
            ok, what = roll_back(lam, name)
        except (ClientError, BotoCoreError) as error:
            ok, what = False, f"AWS error: {error}"
        failed += not ok
        say(f"  {'rolled back' if ok else 'NOT rolled back':<16} {name}: {what}")
    say(f"==> {len(names) - failed} of {len(names)} functions rolled back")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", required=True)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--endpoint-url", help="a local AWS (tests)")
    args = parser.parse_args()
    return run(args.stack, args.region, args.endpoint_url)


if __name__ == "__main__":
    sys.exit(main())
