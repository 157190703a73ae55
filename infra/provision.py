#!/usr/bin/env python3
"""Create, in a local AWS (moto), every resource that infra/template.yaml declares.

The template is the single source of truth: this script reads it, resolves the
intrinsic functions it uses (Ref, GetAtt, Sub, Join, Select, If, Split) and creates
each table, queue, secret and schedule through the service APIs, applying the
properties that moto's CloudFormation would silently ignore (TTL, PITR, SSE,
redrive). Adding a resource of a supported type to the template is enough for it to
exist locally; a resource type it does not know is listed, never silently skipped.

It also resolves every function's environment (Globals merged with the function's
own), so local runs get the same variables as Lambda: `--env-file` writes them.

Running it twice converges: existing resources are updated, never recreated, and
secrets keep their values.

Usage:
  provision.py --endpoint http://127.0.0.1:5055 --stack-name sophia-local \
      [--param Name=Value ...] [--env-file .local/dev.env] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any, Callable

import boto3
import yaml
from botocore.config import Config
from botocore.exceptions import ClientError

ACCOUNT_ID = "123456789012"
TEMPLATE = Path(__file__).with_name("template.yaml")

# Types that exist only in AWS and have no local counterpart the functions use.
NOT_LOCAL = {
    "AWS::Serverless::HttpApi": "API Gateway: `cargo lambda watch` routes locally",
    "AWS::Serverless::Api": "API Gateway: `cargo lambda watch` routes locally",
    "AWS::Serverless::Function": "functions run under `cargo lambda watch`",
    "AWS::Lambda::Permission": "no Lambda service locally",
    "AWS::Lambda::Url": "`cargo lambda watch` serves function URLs",
    "AWS::IAM::Role": "moto does not enforce IAM",
    "AWS::IAM::Policy": "moto does not enforce IAM",
    "AWS::Lambda::EventSourceMapping": "moto would try to run the function (needs Docker)",
    "AWS::CloudWatch::Alarm": "alarms never fire locally; asserted by cfn-lint and drift checks",
    "AWS::SNS::Topic": "alert delivery is a webhook locally",
    "AWS::CloudWatch::Dashboard": "a console view of CloudWatch metrics; cfn-lint checks it",
    "AWS::SecretsManager::RotationSchedule": "rotation would invoke a Lambda (needs Docker); tests and `make invoke` drive the steps",
}


# ------------------------------------------------------------------ template loading
class _Loader(yaml.SafeLoader):
    """YAML loader that turns CloudFormation short-form tags into long form."""


def _tag(tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = _Loader.construct_scalar(_LOADER_SINGLETON, node)
        if tag_suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = _Loader.construct_sequence(_LOADER_SINGLETON, node, deep=True)
    else:
        value = _Loader.construct_mapping(_LOADER_SINGLETON, node, deep=True)
    return {name: value}


_LOADER_SINGLETON = _Loader("")
_Loader.add_multi_constructor("!", lambda loader, suffix, node: _tag(suffix, node))


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    with path.open() as handle:
        return yaml.load(handle, Loader=_Loader)  # noqa: S506 - SafeLoader subclass


# ------------------------------------------------------------------ resolution
class Stack:
    """A template bound to a stack name, parameters and a local AWS endpoint."""

    def __init__(self, template: dict[str, Any], name: str, region: str,
                 params: dict[str, str], clients: Callable[[str], Any] | None):
        self.template = template
        self.name = name
        self.region = region
        self.resources: dict[str, dict[str, Any]] = template.get("Resources", {})
        self.params = self._parameters(params)
        self.conditions: dict[str, bool] = {}
        self.clients = clients
        self.created: dict[str, dict[str, Any]] = {}
        self.in_progress: set[str] = set()
        self.skipped: dict[str, str] = {}

    def _parameters(self, given: dict[str, str]) -> dict[str, Any]:
        declared = self.template.get("Parameters", {})
        unknown = set(given) - set(declared)
        if unknown:
            raise SystemExit(f"unknown template parameter(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for key, spec in declared.items():
            if key in given:
                values[key] = given[key]
            elif "Default" in spec:
                values[key] = spec["Default"]
            else:
                raise SystemExit(f"template parameter {key} has no default; pass --param {key}=...")
            pattern = spec.get("AllowedPattern")
            if pattern and not re.fullmatch(pattern, str(values[key])):
                raise SystemExit(f"parameter {key}={values[key]!r} does not match {pattern}")
            allowed = spec.get("AllowedValues")
            if allowed and values[key] not in allowed:
                raise SystemExit(f"parameter {key}={values[key]!r} is not one of {allowed}")
        return values

    # Pseudo parameters as CloudFormation would give them.
    def pseudo(self, name: str) -> Any:
        return {
            "AWS::StackName": self.name,
            "AWS::Region": self.region,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": None,
            "AWS::StackId": f"arn:aws:cloudformation:{self.region}:{ACCOUNT_ID}:stack/{self.name}/local",
        }[name]

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            self.conditions[name] = bool(self.resolve(self.template["Conditions"][name]))
        return self.conditions[name]

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [item for item in (self.resolve(v) for v in value) if item is not None]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            handler = {
                "Ref": self._ref,
                "Fn::GetAtt": self._get_att,
                "Fn::Sub": self._sub,
                "Fn::Join": lambda a: self.resolve(a[0]).join(str(x) for x in self.resolve(a[1])),
                "Fn::Select": lambda a: self.resolve(a[1])[int(self.resolve(a[0]))],
                "Fn::Split": lambda a: self.resolve(a[1]).split(self.resolve(a[0])),
                "Fn::If": lambda a: self.resolve(a[1] if self.condition(a[0]) else a[2]),
                "Fn::Equals": lambda a: self.resolve(a[0]) == self.resolve(a[1]),
                "Fn::Not": lambda a: not self.resolve(a[0]),
                "Fn::And": lambda a: all(self.resolve(x) for x in a),
                "Fn::Or": lambda a: any(self.resolve(x) for x in a),
                "Condition": self.condition,
            }.get(key)
            if handler is not None:
                return handler(arg)
        return {k: self.resolve(v) for k, v in value.items() if self.resolve(v) is not None}

    def _ref(self, name: str) -> Any:
        if name.startswith("AWS::"):
            return self.pseudo(name)
        if name in self.params:
            return self.params[name]
        if name == "ServerlessDeploymentApplication":
            # Generated by SAM for the functions' DeploymentPreference (no CodeDeploy locally).
            return f"{self.name}-ServerlessDeploymentApplication"
        if name.endswith(".Version"):
            # SAM's published version. Locally nothing is versioned: the function
            # itself, by the name `cargo lambda watch` serves it (its binary).
            return self.binary(name.removesuffix(".Version"))
        if name.endswith(".Alias"):
            # SAM's AutoPublishAlias: the alias ARN (function ARN + `:live`).
            function = name.removesuffix(".Alias")
            return f"{self._get_att([function, 'Arn'])}:{self.alias(function)}"
        return self.ensure(name)["ref"]

    def binary(self, function: str) -> str:
        """The function's binary: the name `cargo lambda watch` serves it by."""
        build = self.resources[function].get("Metadata", {}).get("BuildProperties", {})
        return build.get("Binary", function)

    def alias(self, function: str) -> str:
        """The function's AutoPublishAlias (its own, else the Globals')."""
        own = self.resources[function].get("Properties", {}).get("AutoPublishAlias")
        return own or self.template.get("Globals", {}).get("Function", {}).get("AutoPublishAlias", "")

    def _get_att(self, arg: list[str] | str) -> Any:
        logical, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
        if attribute == "Version.Version":
            # The version SAM publishes; locally functions are never versioned.
            return "1"
        attributes = self.ensure(logical).get("attributes", {})
        if attribute not in attributes:
            raise SystemExit(f"GetAtt {logical}.{attribute}: attribute not supported locally")
        return attributes[attribute]

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        variables = {k: self.resolve(v) for k, v in variables.items()}

        def replace(match: re.Match[str]) -> str:
            token = match.group(1)
            if token.startswith("!"):
                return "${" + token[1:] + "}"
            if token in variables:
                return str(variables[token])
            if token.endswith((".Version", ".Alias")):
                return str(self._ref(token))
            if "." in token and not token.startswith("AWS::"):
                return str(self._get_att(token.split(".", 1)))
            return str(self._ref(token))

        return re.sub(r"\$\{([^}]+)\}", replace, text)

    # ------------------------------------------------------------- creation
    def ensure(self, logical: str) -> dict[str, Any]:
        """Creates (or updates) a resource once, creating what it refers to first."""
        if logical in self.created:
            return self.created[logical]
        if logical in self.in_progress:
            raise SystemExit(f"circular reference through {logical}")
        if logical not in self.resources:
            raise SystemExit(f"reference to unknown resource or parameter {logical}")
        self.in_progress.add(logical)
        spec = self.resources[logical]
        kind = spec["Type"]
        if "Condition" in spec and not self.condition(spec["Condition"]):
            result: dict[str, Any] = {"ref": None, "type": kind, "skipped": "condition is false"}
        else:
            creator = CREATORS.get(kind)
            if creator is not None:
                properties = self.resolve(spec.get("Properties", {}))
                result = creator(self, logical, properties)
            else:
                result = placeholder(self, logical, kind)
        result["type"] = kind
        self.created[logical] = result
        self.in_progress.discard(logical)
        return result

    def client(self, service: str) -> Any:
        if self.clients is None:
            raise SystemExit("no endpoint: cannot create resources")
        return self.clients(service)

    def function_environments(self) -> dict[str, dict[str, str]]:
        """Each function's environment: Globals, then its own variables."""
        glob = self.template.get("Globals", {}).get("Function", {})
        base = self.resolve(glob.get("Environment", {}).get("Variables", {}))
        envs: dict[str, dict[str, str]] = {}
        for logical, spec in self.resources.items():
            if spec["Type"] != "AWS::Serverless::Function":
                continue
            own = spec.get("Properties", {}).get("Environment", {}).get("Variables", {})
            merged = {**base, **self.resolve(own)}
            # What job-drift-detect cannot find locally because this script does not create it.
            merged["DRIFT_SKIP"] = "functions,rotation,cloudformation"
            envs[self.binary(logical)] = {k: str(v) for k, v in merged.items()}
        return envs


def arn(stack: Stack, service: str, resource: str) -> str:
    return f"arn:aws:{service}:{stack.region}:{ACCOUNT_ID}:{resource}"


def placeholder(stack: Stack, logical: str, kind: str) -> dict[str, Any]:
    """Resources that do not exist locally still resolve, so references work."""
    stack.skipped[logical] = NOT_LOCAL.get(kind, f"type {kind} is not provisioned locally")
    name = f"{stack.name}-{logical}"
    attributes = {"Arn": arn(stack, "local", name)}
    if kind == "AWS::Serverless::Function":
        props = stack.resources[logical].get("Properties", {})
        if "FunctionName" in props:
            name = stack.resolve(props["FunctionName"])
        attributes["Arn"] = arn(stack, "lambda", f"function:{name}")
    if kind == "AWS::IAM::Role":
        attributes["Arn"] = f"arn:aws:iam::{ACCOUNT_ID}:role/{name}"
    return {"ref": name, "attributes": attributes}


# ------------------------------------------------------------------ DynamoDB
def create_table(stack: Stack, logical: str, props: dict[str, Any]) -> dict[str, Any]:
    ddb = stack.client("dynamodb")
    name = props.get("TableName") or f"{stack.name}-{logical}"
    request: dict[str, Any] = {
        "TableName": name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props.get("BillingMode", "PROVISIONED"),
    }
    for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes", "ProvisionedThroughput",
                "StreamSpecification", "Tags", "TableClass", "DeletionProtectionEnabled"):
        if key in props:
            request[key] = props[key]
    sse = props.get("SSESpecification")
    if sse:
        request["SSESpecification"] = {"Enabled": bool(sse.get("SSEEnabled"))}
        if sse.get("SSEType"):
            request["SSESpecification"]["SSEType"] = sse["SSEType"]
        if sse.get("KMSMasterKeyId"):
            request["SSESpecification"]["KMSMasterKeyId"] = sse["KMSMasterKeyId"]
    try:
        ddb.create_table(**request)
        action = "created"
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceInUseException":
            raise
        action = "exists"
    ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    ttl = props.get("TimeToLiveSpecification")
    if ttl:
        current = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        wanted = "ENABLED" if ttl.get("Enabled") else "DISABLED"
        if current.get("TimeToLiveStatus") != wanted:
            ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={
                "AttributeName": ttl["AttributeName"], "Enabled": bool(ttl.get("Enabled"))})
    pitr = props.get("PointInTimeRecoverySpecification")
    if pitr is not None:
        ddb.update_continuous_backups(TableName=name, PointInTimeRecoverySpecification={
            "PointInTimeRecoveryEnabled": bool(pitr.get("PointInTimeRecoveryEnabled"))})
    described = ddb.describe_table(TableName=name)["Table"]
    return {
        "ref": name,
        "action": action,
        "attributes": {"Arn": described["TableArn"], "StreamArn": described.get("LatestStreamArn")},
    }


# ------------------------------------------------------------------ SQS
SQS_ATTRIBUTES = {
    "DelaySeconds", "MaximumMessageSize", "MessageRetentionPeriod", "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout", "KmsMasterKeyId", "KmsDataKeyReusePeriodSeconds", "SqsManagedSseEnabled",
    "FifoQueue", "ContentBasedDeduplication", "DeduplicationScope", "FifoThroughputLimit",
    "RedrivePolicy", "RedriveAllowPolicy",
}


def _sqs_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def create_queue(stack: Stack, logical: str, props: dict[str, Any]) -> dict[str, Any]:
    sqs = stack.client("sqs")
    name = props.get("QueueName") or f"{stack.name}-{logical}"
    unknown = set(props) - SQS_ATTRIBUTES - {"QueueName", "Tags"}
    if unknown:
        raise SystemExit(f"{logical}: queue properties not supported locally: {sorted(unknown)}")
    attributes = {k: _sqs_value(v) for k, v in props.items() if k in SQS_ATTRIBUTES}
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        settable = {k: v for k, v in attributes.items() if k != "FifoQueue"}
        if settable:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=settable)
        action = "updated"
    except ClientError as error:
        if error.response["Error"]["Code"] not in ("AWS.SimpleQueueService.NonExistentQueue",
                                                   "QueueDoesNotExist"):
            raise
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        action = "created"
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return {
        "ref": url,
        "action": action,
        "attributes": {"Arn": queue_arn, "QueueName": name, "QueueUrl": url},
    }


# ------------------------------------------------------------------ Secrets Manager
def create_secret(stack: Stack, logical: str, props: dict[str, Any]) -> dict[str, Any]:
    sm = stack.client("secretsmanager")
    name = props.get("Name") or f"{stack.name}-{logical}"
    try:
        found = sm.describe_secret(SecretId=name)
        return {"ref": found["ARN"], "action": "exists", "attributes": {"Id": found["ARN"]}}
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
    value = props.get("SecretString")
    generate = props.get("GenerateSecretString")
    if value is None and generate is not None:
        generated = secrets.token_urlsafe(int(generate.get("PasswordLength", 32)))
        template = generate.get("SecretStringTemplate")
        if template:
            document = json.loads(template)
            document[generate["GenerateStringKey"]] = generated
            value = json.dumps(document)
        else:
            value = generated
    request = {"Name": name, "SecretString": value if value is not None else secrets.token_urlsafe(32)}
    for key in ("Description", "Tags", "KmsKeyId"):
        if key in props:
            request[key] = props[key]
    created = sm.create_secret(**request)
    return {"ref": created["ARN"], "action": "created", "attributes": {"Id": created["ARN"]}}


# ------------------------------------------------------------------ Scheduler
def create_schedule(stack: Stack, logical: str, props: dict[str, Any]) -> dict[str, Any]:
    scheduler = stack.client("scheduler")
    name = props.get("Name") or f"{stack.name}-{logical}"
    request = {
        "Name": name,
        "ScheduleExpression": props["ScheduleExpression"],
        "FlexibleTimeWindow": props.get("FlexibleTimeWindow", {"Mode": "OFF"}),
        "Target": props["Target"],
        "State": props.get("State", "ENABLED"),
    }
    for key in ("Description", "ScheduleExpressionTimezone", "GroupName"):
        if key in props:
            request[key] = props[key]
    try:
        scheduler.get_schedule(Name=name, GroupName=props.get("GroupName", "default"))
        scheduler.update_schedule(**request)
        action = "updated"
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
        scheduler.create_schedule(**request)
        action = "created"
    schedule_arn = arn(stack, "scheduler", f"schedule/{props.get('GroupName', 'default')}/{name}")
    return {"ref": name, "action": action, "attributes": {"Arn": schedule_arn}}


CREATORS: dict[str, Callable[[Stack, str, dict[str, Any]], dict[str, Any]]] = {
    "AWS::DynamoDB::Table": create_table,
    "AWS::SQS::Queue": create_queue,
    "AWS::SecretsManager::Secret": create_secret,
    "AWS::Scheduler::Schedule": create_schedule,
}


# ------------------------------------------------------------------ manifest
def manifest(stack: Stack) -> dict[str, Any]:
    """The declared properties of every locally provisioned resource, resolved."""
    declared: dict[str, Any] = {}
    for logical, spec in stack.resources.items():
        if spec["Type"] in CREATORS and not stack.created[logical].get("skipped"):
            declared[logical] = {
                "type": spec["Type"],
                "physical_id": stack.created[logical]["ref"],
                "properties": stack.resolve(spec.get("Properties", {})),
            }
    return declared


def parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--param {item!r}: expected Name=Value")
        params[key] = value
    return params


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", required=True, help="local AWS endpoint, e.g. http://127.0.0.1:5055")
    parser.add_argument("--stack-name", default="sophia-local")
    parser.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"))
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    parser.add_argument("--param", action="append", default=[], help="template parameter Name=Value")
    parser.add_argument("--env-file", type=Path, help="write the functions' merged environment here")
    parser.add_argument("--json", action="store_true", help="print resources, env and manifest as JSON")
    args = parser.parse_args()

    if not args.endpoint.startswith(("http://127.0.0.1", "http://localhost")):
        raise SystemExit("refusing to provision anything but a local AWS on loopback")
    session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test",
                                    region_name=args.region)
    config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=2, read_timeout=10)
    clients: dict[str, Any] = {}

    def client(service: str) -> Any:
        if service not in clients:
            clients[service] = session.client(service, endpoint_url=args.endpoint, config=config)
        return clients[service]

    stack = Stack(load_template(args.template), args.stack_name, args.region,
                  parse_params(args.param), client)
    for logical in stack.resources:
        stack.ensure(logical)
    envs = stack.function_environments()
    merged: dict[str, str] = {}
    for function, env in envs.items():
        for key, value in env.items():
            if merged.get(key, value) != value:
                raise SystemExit(f"{function}: {key} differs between functions; "
                                 "local runs share one environment, so names must be unique")
            merged[key] = value
    if args.env_file:
        args.env_file.parent.mkdir(parents=True, exist_ok=True)
        # Quoted: values such as FLEET_ENDPOINTS contain '=' and ','.
        args.env_file.write_text("".join(f"{k}={json.dumps(v)}\n" for k, v in sorted(merged.items())))

    if args.json:
        print(json.dumps({
            "stack": stack.name,
            "region": stack.region,
            "resources": {k: {kk: vv for kk, vv in v.items() if kk != "attributes"} | {
                "attributes": v.get("attributes", {})} for k, v in stack.created.items()},
            "functions": envs,
            "env": merged,
            "manifest": manifest(stack),
            "not_local": stack.skipped,
        }, indent=2, default=str))
    else:
        for logical, result in stack.created.items():
            if result.get("skipped"):
                print(f"  {'skipped':8} {result['type']:28} {logical} ({result['skipped']})")
            elif logical not in stack.skipped:
                print(f"  {result.get('action', 'ok'):8} {result['type']:28} {logical} -> {result['ref']}")
        kinds = sorted({stack.resources[l]["Type"] for l in stack.skipped})
        print(f"  not local: {len(stack.skipped)} resources of types {', '.join(kinds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
