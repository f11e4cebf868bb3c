"""The Prometheus rules and the Grafana dashboard: promtool checks and unit-tests the rules; the dashboard's queries
are checked for PromQL syntax by the same promtool, as recording rules in a scratch file (Grafana's `$variables`
replaced by plain values first); and `queries` lists every PromQL expression in `deploy/` for the metric-name check.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from deploy.checks import which
from deploy.checks.manifests import Object, name_of

#: Grafana's interval variables become this range, so a query with one still parses as PromQL.
DEFAULT_RANGE = "5m"

_INTERVAL_VARIABLE = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}")
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def _promtool(*args: str, cwd: Path | None = None) -> list[str]:
    """promtool's output as one problem if it failed (named after the command and its last argument), else none."""
    done = subprocess.run([which("promtool"), *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode == 0:
        return []
    lines = [line.rstrip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return [f"promtool {args[0]} {args[1]} {args[-1]}: " + "\n    ".join(lines)]


def rules_problems(rules: Path, tests: Path) -> list[str]:
    """`promtool check rules` on the rules and `promtool test rules` on their unit tests."""
    problems = _promtool("check", "rules", rules.name, cwd=rules.parent)
    if not problems:  # the unit tests load the same file: one report of a broken rule is enough
        problems = _promtool("test", "rules", tests.name, cwd=tests.parent)
    return problems


def syntax_problems(name: str, named: list[tuple[str, str]]) -> list[str]:
    """PromQL that promtool can't parse, checked as recording rules `query:<n>` in a scratch file named after `name`."""
    rules = [{"record": f"query:{i}", "expr": expr} for i, (_, expr) in enumerate(named)]
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / name
        path.write_text(yaml.safe_dump({"groups": [{"name": name, "rules": rules}]}))
        problems = _promtool("check", "rules", name, cwd=Path(scratch))
    for i, (where, _) in enumerate(named):
        problems = [problem.replace(f'"query:{i}"', f'"query:{i}" ({where})') for problem in problems]
    return problems


def grafana_expr(expr: str) -> str:
    """A dashboard query as plain PromQL: interval variables become a range, other variables a placeholder."""
    expr = _INTERVAL_VARIABLE.sub(DEFAULT_RANGE, expr)
    return _VARIABLE.sub("grafana_variable", expr)


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside it


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, query) of every Prometheus query in the dashboard: panel targets and query variables."""
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            yield f"variable {variable.get('name')!r}", query["query"] if isinstance(query, dict) else query


def dashboard_problems(path: Path) -> list[str]:
    """A dashboard that isn't JSON, lacks a uid or title, uses a fixed data source, or has a query that won't parse."""
    try:
        dashboard = json.loads(path.read_text())
    except ValueError as exc:
        return [f"{path.name}: not JSON: {exc}"]
    problems = [f"{path.name}: no {key}" for key in ("uid", "title") if not dashboard.get(key)]
    for panel in _panels(dashboard):
        source = panel.get("datasource")
        if panel.get("type") != "row" and (not isinstance(source, dict) or source.get("uid") != "${datasource}"):
            problems.append(f"{path.name}: panel {panel.get('title')!r} doesn't use the $datasource variable")
    named = []
    for where, query in dashboard_queries(dashboard):
        if where.startswith("variable"):
            match = re.match(r"^\s*label_values\((.+),\s*\w+\)\s*$", query)
            if match is None:
                problems.append(f"{path.name}: {where}: only label_values(<selector>, <label>) queries are checked")
                continue
            query = match.group(1)
        named.append((where, grafana_expr(query)))
    problems += syntax_problems(path.name, named)
    return problems


def queries(deploy: Path, objects: list[Object]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every query in `deploy/`: alert rules, dashboards, and the rendered ScaledObjects."""
    for path in sorted((deploy / "prometheus").glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield f"{path.name}: {rule.get('alert') or rule.get('record')}", str(rule["expr"])
    for path in sorted((deploy / "grafana").glob("*.json")):
        for where, query in dashboard_queries(json.loads(path.read_text())):
            yield f"{path.name}: {where}", grafana_expr(query)
    for obj in objects:
        if obj.get("kind") == "ScaledObject":
            for trigger in obj["spec"]["triggers"]:
                if trigger["type"] == "prometheus":
                    yield f"{name_of(obj)} trigger {trigger.get('name')}", trigger["metadata"]["query"]
