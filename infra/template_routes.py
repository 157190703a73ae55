#!/usr/bin/env python3
"""Print the API routes infra/template.yaml gives each function, as JSON:
{"api-chat": [{"path": "/v1/chat/completions", "method": "ANY", "streaming": true}, ...], ...}

The contract test (tests/integration/tests/api_contract.rs) compares this with
the functions' own route tables, so the deployed API and the code cannot drift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from provision import load_template  # noqa: E402


def routes() -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for logical, spec in load_template()["Resources"].items():
        if spec["Type"] != "AWS::Serverless::Function":
            continue
        binary = spec.get("Metadata", {}).get("BuildProperties", {}).get("Binary", logical)
        for event in spec.get("Properties", {}).get("Events", {}).values():
            if event["Type"] != "Api":
                continue
            props = event["Properties"]
            out.setdefault(binary, []).append({
                "path": props["Path"],
                "method": props["Method"],
                "streaming": props.get("ResponseTransferMode") == "RESPONSE_STREAM",
            })
    return out


if __name__ == "__main__":
    print(json.dumps(routes(), indent=2))
