#!/usr/bin/env python3
"""Checks of the template's CloudWatch dashboard and anomaly alarms (run by `make test`).

CloudWatch accepts a dashboard or an alarm on a metric nobody emits and shows
an empty graph or stays in INSUFFICIENT_DATA forever, so a renamed metric would
go unnoticed. Here every metric of the `Sophia` namespace that the dashboard or
an alarm reads must be one the code emits (a `MetricSet` `.count("…")` or
`.millis("…")` in shared/ or functions/), with the dimensions the code gives it;
the dashboard body must be JSON; every anomaly band alarm must name its band
(`ThresholdMetricId`). The check then proves it can fail on a made-up metric.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from provision import load_template  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "Sophia"


def emitted() -> dict[str, set[frozenset[str]]]:
    """Metric name -> the dimension sets the code emits it with."""
    found: dict[str, set[frozenset[str]]] = {}
    for path in list((ROOT / "shared/src").rglob("*.rs")) + list((ROOT / "functions").rglob("*.rs")):
        text = path.read_text()
        for chain in re.finditer(r"MetricSet::new\([^)]*\)(.*?)\.emit\(\)|MetricSet::new\([^)]*\)(.*?)(?:\n\s*\n|\}\s*$)",
                                 text, re.S):
            body = chain.group(1) or chain.group(2) or ""
            dims = frozenset(re.findall(r'\.dimension\(\s*"([A-Za-z]+)"', body))
            for name in re.findall(r'\.(?:count|millis)\(\s*"([A-Za-z]+)"', body):
                found.setdefault(name, set()).add(dims)
    return found


def dashboard_reads(body: str) -> list[tuple[str, frozenset[str]]]:
    """(metric, dimension names) of every SEARCH of the Sophia namespace."""
    reads = []
    for schema, metric in re.findall(r'\{' + NAMESPACE + r',([A-Za-z,]+)\} MetricName=\\?"([A-Za-z]+)\\?"', body):
        reads.append((metric, frozenset(schema.split(","))))
    return reads


def alarm_reads(props: dict[str, Any]) -> list[tuple[str, frozenset[str]]]:
    reads = []
    for query in props.get("Metrics", []):
        metric = query.get("MetricStat", {}).get("Metric", {})
        if metric.get("Namespace") == NAMESPACE:
            dims = frozenset(d["Name"] for d in metric.get("Dimensions", []))
            reads.append((metric["MetricName"], dims))
    if props.get("Namespace") == NAMESPACE:
        reads.append((props["MetricName"], frozenset(d["Name"] for d in props.get("Dimensions", []))))
    return reads


def findings(template: dict[str, Any], code: dict[str, set[frozenset[str]]]) -> list[str]:
    problems = []
    dashboards = 0
    for logical, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        reads: list[tuple[str, frozenset[str]]] = []
        if resource["Type"] == "AWS::CloudWatch::Dashboard":
            dashboards += 1
            body = props["DashboardBody"]
            text = body["Fn::Sub"] if isinstance(body, dict) else body
            try:
                json.loads(re.sub(r"\$\{[^}]+\}", "x", text))
            except json.JSONDecodeError as error:
                problems.append(f"{logical}: the dashboard body is not JSON: {error}")
                continue
            reads = dashboard_reads(text)
            if not reads:
                problems.append(f"{logical}: reads no metric of {NAMESPACE}")
        elif resource["Type"] == "AWS::CloudWatch::Alarm":
            reads = alarm_reads(props)
            uses_band = any("ANOMALY_DETECTION_BAND" in q.get("Expression", "") for q in props.get("Metrics", []))
            if uses_band and not props.get("ThresholdMetricId"):
                problems.append(f"{logical}: an anomaly band alarm without ThresholdMetricId")
        for metric, dims in reads:
            if metric not in code:
                problems.append(f"{logical}: reads {NAMESPACE}/{metric}, which no code emits")
            elif dims not in code[metric]:
                shown = sorted(sorted(d) for d in code[metric])
                problems.append(f"{logical}: reads {metric} by {sorted(dims)}; the code emits it by {shown}")
    if dashboards == 0:
        problems.append("the template has no CloudWatch dashboard")
    return problems


def main() -> int:
    template = load_template()
    code = emitted()
    problems = findings(template, code)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    if problems:
        return 1
    broken = copy.deepcopy(template)
    name = next(k for k, v in broken["Resources"].items() if v["Type"] == "AWS::CloudWatch::Dashboard")
    body = broken["Resources"][name]["Properties"]["DashboardBody"]
    body["Fn::Sub"] = body["Fn::Sub"].replace('MetricName=\\"Requests\\"', 'MetricName=\\"Requestz\\"')
    if not findings(broken, code):
        print("the checks passed a dashboard on a made-up metric: they cannot fail", file=sys.stderr)
        return 1
    alarms = sum(1 for v in template["Resources"].values() if v["Type"] == "AWS::CloudWatch::Alarm")
    print(f"  the dashboard and {alarms} alarms read only metrics the code emits, by the dimensions it emits them with")
    return 0


if __name__ == "__main__":
    sys.exit(main())
