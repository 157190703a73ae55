"""Tests tools/rollback.py against a moto server on 127.0.0.1 (run by `make deploy-checks`).

moto keeps Lambda versions and aliases (routing weights stored, not applied),
which is all the rollback touches. It has no CloudFormation stack for these
functions, so the step that stops CodeDeploy deployments reports it could not
read the stack; that branch is only exercised in AWS.

Three functions of stack `sophia-rb`: one with three versions and the alias on
v3 (must move to v2), one in the middle of a shift (v1 with 10 % on v2: must
end with all traffic on v1), one with a single version (cannot roll back: the
tool must say so and exit 1). A function of another stack must be untouched.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import sys
import zipfile

import boto3
from moto.server import ThreadedMotoServer

sys.path.insert(0, os.path.dirname(__file__))
import rollback  # noqa: E402



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def code(text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("bootstrap", text)
    return buffer.getvalue()


def function(lam, role: str, name: str, releases: int) -> None:
    lam.create_function(FunctionName=name, Runtime="provided.al2023", Role=role, Handler="bootstrap",
                        Code={"ZipFile": code(f"{name} 1")})
    lam.publish_version(FunctionName=name)
    for release in range(2, releases + 1):
        lam.update_function_code(FunctionName=name, ZipFile=code(f"{name} {release}"))
        lam.publish_version(FunctionName=name)


def main() -> int:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "testing")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        lam = boto3.client("lambda", region_name="us-east-1", endpoint_url=endpoint)
        iam = boto3.client("iam", region_name="us-east-1", endpoint_url=endpoint)
        role = iam.create_role(RoleName="lambda", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                           "Action": "sts:AssumeRole"}]}))["Role"]["Arn"]
        function(lam, role, "sophia-rb-api-chat", 3)
        lam.create_alias(FunctionName="sophia-rb-api-chat", Name="live", FunctionVersion="3")
        function(lam, role, "sophia-rb-api-auth", 2)
        lam.create_alias(FunctionName="sophia-rb-api-auth", Name="live", FunctionVersion="1",
                         RoutingConfig={"AdditionalVersionWeights": {"2": 0.1}})
        function(lam, role, "sophia-rb-job-sweep", 1)
        lam.create_alias(FunctionName="sophia-rb-job-sweep", Name="live", FunctionVersion="1")
        function(lam, role, "other-api-chat", 2)
        lam.create_alias(FunctionName="other-api-chat", Name="live", FunctionVersion="2")

        said: list[str] = []
        status = rollback.run("sophia-rb", "us-east-1", endpoint, said.append)
        print("\n".join(f"    | {line}" for line in said))

        def alias(name: str) -> tuple[str, dict]:
            a = lam.get_alias(FunctionName=name, Name="live")
            return a["FunctionVersion"], (a.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}

        failures = []
        expect = {
            "sophia-rb-api-chat": ("2", {}),
            "sophia-rb-api-auth": ("1", {}),
            "sophia-rb-job-sweep": ("1", {}),
            "other-api-chat": ("2", {}),
        }
        for name, wanted in expect.items():
            if alias(name) != wanted:
                failures.append(f"{name}: alias {alias(name)}, expected {wanted}")
        if status != 1:
            failures.append(f"exit status {status}: a function that could not be rolled back must make it 1")
        text = "\n".join(said)
        for needle in ["v3 -> v2", "shift stopped (v2 10%): all traffic on v1",
                       "NOT rolled back  sophia-rb-job-sweep: no version earlier than v1",
                       "2 of 3 functions rolled back"]:
            if needle not in text:
                failures.append(f"the report does not say {needle!r}")
        if "other-api-chat" in text:
            failures.append("another stack's function was touched")
        for failure in failures:
            print(f"  FAIL {failure}", file=sys.stderr)
        if not failures:
            print("  rollback: each alias moved back as expected against the local AWS")
        return 1 if failures else 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
