"""The metric names and labels that PromQL in `deploy/` uses, and the ones the worker exports.

`selectors` reads a PromQL expression with a small tokenizer: an identifier followed by `(` is a function or an
aggregation, one of PromQL's keywords is skipped, and any other identifier outside braces is a metric name, whose
`{...}` matchers name its labels; the label lists of `by`/`without`/`on`/`ignoring`/`group_*` are collected too.
That covers what dashboards and alert rules write (promtool checks the syntax itself).

`exported_metrics` reads the metric declarations from source, with `ast`: the prometheus_client
`Counter`/`Histogram`/`Gauge` calls in `worker/ops/metrics.py` and the `GaugeMetricFamily` calls in
`worker/ops/exposition.py` (the workers' /metrics), and the `Counter` in `worker/webhooks/app.py` (the webhook
receiver's), with their label lists, expanded to the sample names a scrape shows (`_total`; `_bucket`, `_count`,
`_sum`). tests/deploy checks each catalogue against a live scrape of its exposition, so it can't drift from what
the worker and the receiver really serve.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: Labels Prometheus adds to every scraped series from the target (Kubernetes service discovery, the operator).
TARGET_LABELS = frozenset({"namespace", "pod", "instance", "job", "container", "service", "node"})

#: PromQL words that are not metric names when they stand alone.
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless", "inf"}
    | {"nan", "atan2", "start", "end"}
)
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

#: Aggregation operators, which may put their `by (...)` clause before their parentheses.
_AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile"}
    | {"limitk", "limit_ratio"}
)

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
    | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<range>\[[^\]]*\])
    | (?P<variable>\$\{[^}]*\}|\$\w+)
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){},@])
    """,
    re.VERBOSE,
)

#: Grafana's `label_values(<selector>, <label>)` variable query.
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<selector>.+?)\s*,\s*(?P<label>\w+)\s*\)\s*$")


@dataclass
class Selector:
    """A metric named in an expression and the labels its matchers use."""

    metric: str
    labels: set[str] = field(default_factory=set)


@dataclass
class Usage:
    """Everything one expression names: its selectors and its grouping labels."""

    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"can't read PromQL at {expr[pos : pos + 20]!r} in {expr!r}")
        pos = match.end()
        kind = match.lastgroup or ""
        if kind != "ws":
            out.append((kind, match.group()))
    return out


def selectors(expr: str) -> Usage:
    """The metric names, matcher labels and grouping labels in a PromQL expression (or a `label_values` query)."""
    values = _LABEL_VALUES.match(expr)
    if values:
        usage = selectors(values.group("selector"))
        for selector in usage.selectors:
            selector.labels.add(values.group("label"))
        return usage
    usage, tokens, i = Usage(), _tokens(expr), 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in _GROUPING and following == "(":
            i += 2
            while i < len(tokens) and tokens[i][1] != ")":
                if tokens[i][0] == "ident":
                    usage.grouping.add(tokens[i][1])
                i += 1
        elif kind == "ident" and (
            following == "(" or text in _KEYWORDS or (text in _AGGREGATIONS and following in ("by", "without"))
        ):
            pass
        elif kind == "ident" or text == "{":
            selector = Selector(text if kind == "ident" else "")
            if kind == "ident" and following == "{":
                i += 1
            if tokens[i][1] == "{":
                i = _matchers(tokens, i + 1, selector)
            if selector.metric:
                usage.selectors.append(selector)
        i += 1
    return usage


def _matchers(tokens: list[tuple[str, str]], i: int, selector: Selector) -> int:
    """Read `label op "value", ...` up to the closing brace; returns the brace's index."""
    while i < len(tokens) and tokens[i][1] != "}":
        kind, text = tokens[i]
        if kind == "ident" and i + 2 < len(tokens) and tokens[i + 1][1] in ("=", "!=", "=~", "!~"):
            if text == "__name__" and tokens[i + 1][1] == "=" and tokens[i + 2][0] == "string":
                selector.metric = tokens[i + 2][1][1:-1]
            else:
                selector.labels.add(text)
            i += 2
        i += 1
    return i


def _declarations(path: Path) -> Iterator[tuple[str, str, list[str]]]:
    """(constructor, metric name, label names) of every metric declared in `path`."""
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        if func not in ("Counter", "Histogram", "Gauge", "Summary", "GaugeMetricFamily", "CounterMetricFamily"):
            continue
        if not node.args or not isinstance(node.args[0], ast.Constant):
            continue
        labels_node = next((kw.value for kw in node.keywords if kw.arg in ("labels", "labelnames")), None)
        if labels_node is None and len(node.args) > 2:
            labels_node = node.args[2]
        labels = ast.literal_eval(labels_node) if labels_node is not None else []
        yield func, str(node.args[0].value), list(labels)


#: Where the metrics served at /metrics are declared: by the workers (`cekura-worker run`), by the webhook receiver
#: (`cekura-worker webhooks`).
WORKER_SOURCES = ("worker/ops/metrics.py", "worker/ops/exposition.py")
WEBHOOK_SOURCES = ("worker/webhooks/app.py",)


def exported_metrics(
    repo: Path, sources: tuple[str, ...] = WORKER_SOURCES + WEBHOOK_SOURCES
) -> dict[str, frozenset[str]]:
    """{sample name: its labels} of every metric declared in `sources` (default: all the service serves at
    /metrics, workers and webhook receiver), read from the source."""
    out: dict[str, frozenset[str]] = {}
    for source in sources:
        for func, name, labels in _declarations(repo / source):
            base = name.removesuffix("_total") if func in ("Counter", "CounterMetricFamily") else name
            if func in ("Counter", "CounterMetricFamily"):
                out[f"{base}_total"] = frozenset(labels)
            elif func in ("Histogram", "Summary"):
                if func == "Histogram":
                    out[f"{base}_bucket"] = frozenset([*labels, "le"])
                out[f"{base}_count"] = out[f"{base}_sum"] = frozenset(labels)
            else:
                out[base] = frozenset(labels)
    return out


def usage_problems(where: str, expr: str, exported: dict[str, frozenset[str]]) -> list[str]:
    """Metric names the worker doesn't export, and labels none of the expression's metrics has."""
    try:
        usage = selectors(expr)
    except ValueError as exc:
        return [f"{where}: {exc}"]
    problems = []
    if not usage.selectors:
        problems.append(f"{where}: names no metric: {expr!r}")
    known_labels = set(TARGET_LABELS)
    for selector in usage.selectors:
        if selector.metric not in exported:
            problems.append(f"{where}: {selector.metric} is not a metric the worker exports")
            continue
        known_labels |= exported[selector.metric]
        problems += [
            f"{where}: {selector.metric} has no label {label!r}"
            for label in sorted(selector.labels - exported[selector.metric] - TARGET_LABELS)
        ]
    problems += [
        f"{where}: grouping label {label!r} is on none of its metrics"
        for label in sorted(usage.grouping - known_labels)
    ]
    return problems
