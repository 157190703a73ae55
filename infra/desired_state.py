#!/usr/bin/env python3
"""Derive infra/desired-state.json, the drift detector's manifest, from infra/template.yaml.

The template stays the one source of truth: this script resolves it (with the
same resolver as provision.py, for a stack named `{stack}`) and keeps, per
resource, only the properties job-drift-detect compares, as strings. The job
embeds the JSON at build time and substitutes the real stack name at run time.
`--check` fails when the committed file no longer matches the template (the
tests run it), so the two cannot drift apart silently.

Usage:
  desired_state.py            # rewrite infra/desired-state.json
  desired_state.py --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from provision import ACCOUNT_ID, Stack, load_template  # noqa: E402

OUTPUT = Path(__file__).with_name("desired-state.json")
STACK = "{stack}"
REGION = "{region}"


class OfflineStack(Stack):
    """Resolves names and ARNs without creating anything."""

    def ensure(self, logical: str) -> dict[str, Any]:
        if logical in self.created:
            return self.created[logical]
        spec = self.resources[logical]
        kind = spec["Type"]
        props = spec.get("Properties", {})
        name_key = {
            "AWS::DynamoDB::Table": "TableName",
            "AWS::SQS::Queue": "QueueName",
            "AWS::Scheduler::Schedule": "Name",
            "AWS::SecretsManager::Secret": "Name",
            "AWS::Serverless::Function": "FunctionName",
        }.get(kind)
        name = self.resolve(props[name_key]) if name_key and name_key in props else f"{self.name}-{logical}"
        service, resource, ref = {
            "AWS::DynamoDB::Table": ("dynamodb", f"table/{name}", name),
            "AWS::SQS::Queue": ("sqs", name, f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT_ID}/{name}"),
            "AWS::Serverless::Function": ("lambda", f"function:{name}", name),
            "AWS::SecretsManager::Secret": ("secretsmanager", f"secret:{name}", name),
            "AWS::Scheduler::Schedule": ("scheduler", f"schedule/default/{name}", name),
        }.get(kind, ("local", name, name))
        arn = f"arn:aws:{service}:{REGION}:{ACCOUNT_ID}:{resource}"
        attributes = {"Arn": arn, "QueueName": name, "QueueUrl": ref, "StreamArn": None}
        if kind == "AWS::IAM::Role":
            attributes["Arn"] = f"arn:aws:iam::{ACCOUNT_ID}:role/{name}"
        result = {"ref": ref, "name": name, "attributes": attributes, "type": kind}
        self.created[logical] = result
        return result


def last_segment(arn: str) -> str:
    """The resource name at the end of an ARN (`...:name` or `.../name`)."""
    return re.split(r"[:/]", arn)[-1]


def invoked(arn: str) -> str:
    """What a schedule invokes: `function[:alias]` for a Lambda ARN, else the ARN's last segment."""
    return arn.split(":function:", 1)[1] if ":function:" in arn else last_segment(arn)


def keys(schema: list[dict[str, str]]) -> str:
    return ",".join(f"{k['AttributeName']}:{k['KeyType']}" for k in schema)


def flag(value: Any) -> str:
    return "true" if value in (True, "true", "True") else "false"


def desired(stack: OfflineStack) -> list[dict[str, Any]]:
    template = stack.template
    # Resolved as a function's own properties are: a variable whose condition is false is absent.
    glob = stack.resolve(template.get("Globals", {}).get("Function", {}))
    rotation: dict[str, str] = {}
    for spec in stack.resources.values():
        if spec["Type"] == "AWS::SecretsManager::RotationSchedule":
            props = stack.resolve(spec["Properties"])
            rules = props.get("RotationRules", {})
            rotation[props["SecretId"]] = rules.get("ScheduleExpression") or f"rate({rules.get('AutomaticallyAfterDays')} days)"
    out: list[dict[str, Any]] = []
    for logical, spec in stack.resources.items():
        kind = spec["Type"]
        if "Condition" in spec and not stack.condition(spec["Condition"]):
            continue
        props = stack.resolve(spec.get("Properties", {}))
        name = stack.ensure(logical)["name"]
        p: dict[str, str]
        if kind == "AWS::DynamoDB::Table":
            gsis = props.get("GlobalSecondaryIndexes", [])
            p = {
                "billing_mode": props.get("BillingMode", "PROVISIONED"),
                "key_schema": keys(props["KeySchema"]),
                "global_secondary_indexes": ";".join(
                    sorted(f"{g['IndexName']}={keys(g['KeySchema'])}" for g in gsis)),
                "ttl_attribute": (props.get("TimeToLiveSpecification") or {}).get("AttributeName", "")
                if flag((props.get("TimeToLiveSpecification") or {}).get("Enabled")) == "true" else "",
                "point_in_time_recovery": flag(
                    (props.get("PointInTimeRecoverySpecification") or {}).get("PointInTimeRecoveryEnabled")),
                "encryption": flag((props.get("SSESpecification") or {}).get("SSEEnabled")),
            }
            out.append({"kind": "table", "logical": logical, "name": name, "properties": p})
        elif kind == "AWS::SQS::Queue":
            redrive = props.get("RedrivePolicy") or {}
            p = {
                "visibility_timeout": str(props.get("VisibilityTimeout", 30)),
                "message_retention": str(props.get("MessageRetentionPeriod", 345600)),
                "encryption": flag(props.get("SqsManagedSseEnabled")) if "KmsMasterKeyId" not in props else "kms",
                "dead_letter_queue": last_segment(redrive["deadLetterTargetArn"]) if redrive else "",
                "max_receive_count": str(redrive.get("maxReceiveCount", "")) if redrive else "",
            }
            out.append({"kind": "queue", "logical": logical, "name": name, "properties": p})
        elif kind == "AWS::Serverless::Function":
            merged = {**glob, **props}
            env = {**glob.get("Environment", {}).get("Variables", {}),
                   **props.get("Environment", {}).get("Variables", {})}
            p = {
                "memory": str(merged.get("MemorySize", 128)),
                "timeout": str(merged.get("Timeout", 3)),
                "architecture": ",".join(merged.get("Architectures", ["x86_64"])),
                "runtime": merged.get("Runtime", ""),
                "reserved_concurrency": str(merged.get("ReservedConcurrentExecutions", "")),
                "environment_variables": ",".join(sorted(env)),
            }
            out.append({"kind": "function", "logical": logical, "name": name, "properties": p})
        elif kind == "AWS::Scheduler::Schedule":
            target = props["Target"]
            p = {
                "expression": props["ScheduleExpression"],
                "state": props.get("State", "ENABLED"),
                "target": invoked(target["Arn"]),
                "dead_letter_queue": last_segment((target.get("DeadLetterConfig") or {}).get("Arn", "")),
                "maximum_retry_attempts": str((target.get("RetryPolicy") or {}).get("MaximumRetryAttempts", "")),
            }
            out.append({"kind": "schedule", "logical": logical, "name": name, "properties": p})
        elif kind == "AWS::SecretsManager::Secret":
            p = {"rotation": rotation.get(name, "")}
            out.append({"kind": "secret", "logical": logical, "name": name, "properties": p})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed file is out of date")
    args = parser.parse_args()
    stack = OfflineStack(load_template(), STACK, REGION, {}, None)
    text = json.dumps({"source": "infra/template.yaml (generated by infra/desired_state.py)",
                       "resources": desired(stack)}, indent=2) + "\n"
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print("infra/desired-state.json is out of date: run python3 infra/desired_state.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(Path.cwd()) if OUTPUT.is_relative_to(Path.cwd()) else OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
