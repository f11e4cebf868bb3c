"""Every metric the dashboard, the alert rules and the ScaledObject query is one the worker really serves.

The exposition runs for real: a worker-like process records one sample of every metric in `worker/ops/metrics.py`
into a multiprocess directory, and this process serves that directory plus the Redis gauges over HTTP with
`worker.ops.exposition.build_registry`, as `cekura-worker run` does; the test scrapes `/metrics`. That live list is
also the reference for the catalogue `deploy/checks/promql.py` reads from source, which `make validate-deploy`
checks names against without Redis.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from config.settings import Settings
from deploy.checks import monitoring, promql
from tests.deploy.support import DEPLOY, REPO
from tests.support import free_port
from worker.ops.exposition import build_registry

#: Run in a fresh interpreter with PROMETHEUS_MULTIPROC_DIR set (prometheus_client picks its multiprocess value
#: class at import): one child of every metric in worker/ops/metrics.py, recorded as a worker process would. It reads
#: each metric's label names from `_labelnames`, a private attribute of prometheus_client's metric classes.
_RECORD_EVERY_METRIC = """
from prometheus_client.metrics import MetricWrapperBase
import worker.ops.metrics

for metric in vars(worker.ops.metrics).values():
    if isinstance(metric, MetricWrapperBase):
        child = metric.labels(*["x"] * len(metric._labelnames)) if metric._labelnames else metric
        (getattr(child, "inc", None) or child.observe)(0)
"""


@pytest.fixture
def live_metrics(settings: Settings, redis_client: redis.Redis, tmp_path: Path) -> Iterator[dict[str, frozenset[str]]]:
    """{sample name: label names} scraped from a live exposition over a worker's files and the test Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_")}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    subprocess.run([sys.executable, "-c", _RECORD_EVERY_METRIC], env=env, check=True, cwd=REPO, timeout=60)
    # The intake's consumer group exists once a worker has started; only then is the lag known and exported.
    redis_client.xgroup_create(settings.cekura_requests_stream, settings.cekura_intake_group, id="0", mkstream=True)

    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=build_registry(settings, str(tmp_path)))
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    yield {name: frozenset(labels) for name, labels in samples.items()}


def _deploy_queries() -> list[tuple[str, str]]:
    """Every PromQL query in deploy/: rules, dashboards, and the ScaledObject as written (no kustomize needed)."""
    scaled = yaml.safe_load((DEPLOY / "components" / "keda" / "scaledobject.yaml").read_text())
    return list(monitoring.queries(DEPLOY, [scaled]))


def test_the_live_scrape_has_every_metric_the_readme_documents(live_metrics: dict[str, frozenset[str]]) -> None:
    assert live_metrics["cekura_redis_up"] == frozenset()
    assert live_metrics["cekura_steps_due"] == frozenset()
    assert live_metrics["cekura_oldest_due_seconds"] == frozenset()
    assert live_metrics["cekura_requests_lag"] == frozenset()
    assert live_metrics["cekura_jobs_finished_total"] == {"kind", "outcome"}
    assert live_metrics["cekura_poll_lateness_seconds_bucket"] == {"le"}


def test_the_validators_catalogue_is_what_the_worker_serves(live_metrics: dict[str, frozenset[str]]) -> None:
    assert promql.exported_metrics(REPO) == live_metrics


def test_every_query_in_deploy_names_served_metrics_and_labels(live_metrics: dict[str, frozenset[str]]) -> None:
    queries = _deploy_queries()
    assert len(queries) > 30
    problems = [problem for where, expr in queries for problem in promql.usage_problems(where, expr, live_metrics)]
    assert problems == []


def test_the_dashboard_and_rules_cover_the_autoscaling_gauges() -> None:
    used = {s.metric for _, expr in _deploy_queries() for s in promql.selectors(expr).selectors}
    assert {"cekura_steps_due", "cekura_oldest_due_seconds", "cekura_requests_lag"} <= used
    assert {"cekura_jobs_finished_total", "cekura_api_calls_total", "cekura_rate_limit_waits_total"} <= used
    assert {"cekura_poll_lateness_seconds_bucket", "cekura_jobs_in_flight", "cekura_live_worker_processes"} <= used
