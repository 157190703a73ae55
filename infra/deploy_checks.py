"""Safe-deploy checks of infra/template.yaml, offline (run by `make test`).

moto has no CodeDeploy and no SAM transform, so the template is translated here
with aws-sam-translator (what `sam deploy` and cfn-lint use) and the result is
checked:

- every function publishes a version and an alias `live`, and has a CodeDeploy
  deployment group with automatic rollback and an alarm on the NEW version
  (the alarm's ExecutedVersion is the version that deployment publishes);
- the traffic shift of each family is the one the README gives: API functions
  a canary, queue consumers linear, scheduled jobs all at once; each runs the
  hooks DeployPreTraffic and DeployPostTraffic, which are themselves not
  shifted and are named `CodeDeployHook_*` (the only names CodeDeploy's role
  may invoke);
- every trigger invokes the alias, never the unqualified function ($LATEST):
  API Gateway integrations, Lambda permissions, queue event source mappings,
  schedules (and the scheduler's IAM resources), secret rotation.

It then checks itself: a template with one function's DeploymentPreference
removed, and one with a schedule aimed at the function instead of its alias,
must each fail. Exit status 1 with every finding listed.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from samtranslator.public.exceptions import InvalidDocumentException
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

# The translator warns about feature toggles and metrics it has no use for here.
logging.getLogger("samtranslator").setLevel(logging.ERROR)

TEMPLATE = Path(__file__).with_name("template.yaml")
ALIAS = "live"
SHIFTS = {
    "Api": "Canary10Percent5Minutes",
    "Worker": "Linear10PercentEvery1Minute",
    "Job": "AllAtOnce",
}


class NoManagedPolicies:
    def load(self) -> dict[str, str]:
        return {}


def translate(template: dict[str, Any]) -> dict[str, Any]:
    template = copy.deepcopy(template)
    for logical, spec in template["Resources"].items():
        if spec["Type"] == "AWS::Serverless::Function":
            # As `sam package` would: code in S3.
            spec["Properties"]["CodeUri"] = f"s3://artifacts/{logical}.zip"
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        return transform(template, {}, NoManagedPolicies())
    except InvalidDocumentException as error:
        raise SystemExit("SAM cannot translate the template:\n" + "\n".join(c.message for c in error.causes))


def refs(value: Any) -> set[str]:
    """Every logical ID a value refers to (Ref, GetAtt, ${} in Sub)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, arg in value.items():
            if key == "Ref" and isinstance(arg, str):
                found.add(arg)
            elif key == "Fn::GetAtt":
                found.add(arg[0] if isinstance(arg, list) else arg.split(".")[0])
            elif key == "Fn::Sub":
                text = arg if isinstance(arg, str) else arg[0]
                found.update(token.split(".")[0] for token in re.findall(r"\$\{([^}!]+)\}", text))
                if not isinstance(arg, str):
                    found.update(refs(arg[1]))
            else:
                found.update(refs(arg))
    elif isinstance(value, list):
        for item in value:
            found.update(refs(item))
    return found


def findings(template: dict[str, Any]) -> list[str]:
    out = translate(template)
    resources = out["Resources"]
    functions = [k for k, v in resources.items() if v["Type"] == "AWS::Lambda::Function"]
    of_type = lambda kind: {k: v for k, v in resources.items() if v["Type"] == kind}  # noqa: E731
    aliases = of_type("AWS::Lambda::Alias")
    versions = of_type("AWS::Lambda::Version")
    groups = of_type("AWS::CodeDeploy::DeploymentGroup")
    alarms = of_type("AWS::CloudWatch::Alarm")
    problems: list[str] = []
    alias_of: dict[str, str] = {}
    for function in functions:
        alias = next((k for k, v in aliases.items()
                      if function in refs(v["Properties"]["FunctionName"])
                      and v["Properties"]["Name"] == ALIAS), None)
        if alias is None:
            problems.append(f"{function}: no alias `{ALIAS}` (AutoPublishAlias)")
            continue
        alias_of[function] = alias
        if function.startswith("Deploy"):
            # A hook: never shifted by CodeDeploy, and named so that CodeDeploy may invoke it.
            name = json.dumps(resources[function]["Properties"]["FunctionName"])
            if f"{function}DeploymentGroup" in groups:
                problems.append(f"{function}: a hook must not be deployed through CodeDeploy itself")
            if "CodeDeployHook_" not in name:
                problems.append(f"{function}: a hook's name must start with CodeDeployHook_ ({name})")
            continue
        version = next((k for k, v in versions.items() if function in refs(v["Properties"]["FunctionName"])), None)
        group = next((v for k, v in groups.items() if k == f"{function}DeploymentGroup"), None)
        if group is None:
            problems.append(f"{function}: no CodeDeploy deployment group (DeploymentPreference)")
            continue
        props = group["Properties"]
        shift = json.dumps(props.get("DeploymentConfigName"))
        family = next((prefix for prefix in SHIFTS if function.startswith(prefix)), None)
        if family is None or SHIFTS[family] not in shift:
            problems.append(f"{function}: traffic shift {shift}, expected {SHIFTS.get(family or '', '?')}")
        rollback = props.get("AutoRollbackConfiguration", {})
        if not rollback.get("Enabled") or "DEPLOYMENT_STOP_ON_ALARM" not in rollback.get("Events", []):
            problems.append(f"{function}: no automatic rollback on alarm")
        hooks = (resources[alias].get("UpdatePolicy", {}).get("CodeDeployLambdaAliasUpdate", {}))
        if "DeployPreTraffic" not in refs(hooks.get("BeforeAllowTrafficHook")):
            problems.append(f"{function}: no pre-traffic hook (DeploymentPreference.Hooks.PreTraffic)")
        if "DeployPostTraffic" not in refs(hooks.get("AfterAllowTrafficHook")):
            problems.append(f"{function}: no post-traffic hook (DeploymentPreference.Hooks.PostTraffic)")
        names = [next(iter(refs(a["Name"])), "") for a in props.get("AlarmConfiguration", {}).get("Alarms", [])]
        on_new_version = [
            name for name in names
            if name in alarms and version in refs(alarms[name]["Properties"])
            and function in refs(alarms[name]["Properties"])
        ]
        if not on_new_version:
            problems.append(f"{function}: no rollback alarm on its new version (ExecutedVersion of {version})")

    def must_target_alias(where: str, value: Any) -> None:
        named = refs(value)
        for function in functions:
            if function in named and alias_of.get(function) not in named:
                problems.append(f"{where} invokes {function} without its alias")

    for logical, spec in resources.items():
        kind, props = spec["Type"], spec.get("Properties", {})
        if kind == "AWS::Lambda::Permission":
            must_target_alias(f"permission {logical}", props["FunctionName"])
        elif kind == "AWS::Lambda::EventSourceMapping":
            must_target_alias(f"event source {logical}", props["FunctionName"])
        elif kind == "AWS::Scheduler::Schedule":
            must_target_alias(f"schedule {logical}", props["Target"]["Arn"])
        elif kind == "AWS::SecretsManager::RotationSchedule":
            must_target_alias(f"rotation {logical}", props.get("RotationLambdaARN"))
        elif kind == "AWS::IAM::Role" and logical == "SchedulerRole":
            must_target_alias("the scheduler's role", props.get("Policies"))
        elif kind == "AWS::ApiGateway::RestApi":
            for path, methods in props["Body"]["paths"].items():
                for method, operation in methods.items():
                    integration = operation.get("x-amazon-apigateway-integration", {})
                    must_target_alias(f"API route {method.upper()} {path}", integration.get("uri"))
    return problems


def main() -> int:
    template = yaml_parse(TEMPLATE.read_text())
    problems = findings(template)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} safe-deploy problems in {TEMPLATE.name}", file=sys.stderr)
        return 1
    functions = [k for k, v in template["Resources"].items() if v["Type"] == "AWS::Serverless::Function"]

    # The checks must be able to fail.
    without_preference = copy.deepcopy(template)
    del without_preference["Resources"][functions[0]]["Properties"]["DeploymentPreference"]
    schedule_at_function = copy.deepcopy(template)
    schedule = next(v for v in schedule_at_function["Resources"].values() if v["Type"] == "AWS::Scheduler::Schedule")
    target = schedule["Properties"]["Target"]
    target["Arn"] = {"Fn::GetAtt": [target["Arn"]["Ref"].removesuffix(".Alias"), "Arn"]}
    for name, broken in [("a function without DeploymentPreference", without_preference),
                         ("a schedule aimed at $LATEST", schedule_at_function)]:
        if not findings(broken):
            print(f"the checks passed {name}: they cannot fail", file=sys.stderr)
            return 1
    print(f"  {len(functions)} functions: alias `{ALIAS}`; each but the hooks: a deployment group with a new-version "
          "alarm, rollback, the documented traffic shift and both hooks; every trigger invokes the alias")
    return 0


if __name__ == "__main__":
    sys.exit(main())
