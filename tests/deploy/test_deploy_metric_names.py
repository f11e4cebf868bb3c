"""Every metric the dashboard, the alert rules and the ScaledObject query is one the worker (or the webhook
receiver) really serves.

The exposition runs for real: a worker-like process records one sample of every metric in `worker/ops/metrics.py`
into a multiprocess directory, and this process serves that directory plus the Redis gauges over HTTP with
`worker.ops.exposition.build_registry`, as `cekura-worker run` does; the test scrapes `/metrics`. The webhook
receiver's application (`cekura-worker webhooks`) is scraped the same way, after one webhook of each outcome. Those
live lists are also the reference for the catalogue `deploy/checks/promql.py` reads from source, which `make
validate-deploy` checks names against without Redis.
"""

from __future__ import annotations

import asyncio
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
from tests.conftest import make_settings
from tests.deploy.support import DEPLOY, REPO
from tests.support import free_port
from worker.ops.exposition import build_registry
from worker.webhooks.app import create_app

WEBHOOK_SECRET = "metric-names-webhook-secret"

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


def _samples(text: str) -> dict[str, frozenset[str]]:
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in samples.items()}


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
    yield _samples(text)


@pytest.fixture
def live_webhook_metrics(settings: Settings, redis_client: redis.Redis) -> dict[str, frozenset[str]]:
    """{sample name: label names} scraped from the webhook receiver's /metrics after a webhook of each outcome it
    can give without a job (refused, malformed, ignored, unmatched)."""
    app = create_app(make_settings(settings.cekura_api_url, cekura_webhook_secret=WEBHOOK_SECRET), redis_client)

    async def scrape() -> str:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            url, ok = "/webhooks/cekura", {"X-CEKURA-SECRET": WEBHOOK_SECRET}
            wrong = {"X-CEKURA-SECRET": "wrong-secret-0123456789"}
            assert (await client.post(url, json={}, headers=wrong)).status_code == 401
            assert (await client.post(url, content=b"[", headers=ok)).status_code == 400
            assert (await client.post(url, json={"event_type": "call_log.completed"}, headers=ok)).status_code == 200
            unmatched = await client.post(url, json={"event_type": "result.completed", "data": {"id": 7}}, headers=ok)
            assert unmatched.json()["outcome"] == "unmatched"
            return (await client.get("/metrics")).text

    return _samples(asyncio.run(scrape()))


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
    assert promql.exported_metrics(REPO, promql.WORKER_SOURCES) == live_metrics


def test_the_validators_catalogue_has_what_the_webhook_receiver_serves(
    live_webhook_metrics: dict[str, frozenset[str]],
) -> None:
    catalogue = promql.exported_metrics(REPO, promql.WEBHOOK_SOURCES)
    assert catalogue == {"cekura_webhooks_total": frozenset({"outcome"})}
    # The receiver's registry is the process's default one: the catalogue is what it declares, found in the scrape.
    assert {name: live_webhook_metrics.get(name) for name in catalogue} == catalogue
    assert promql.exported_metrics(REPO) == {**promql.exported_metrics(REPO, promql.WORKER_SOURCES), **catalogue}


def test_every_query_in_deploy_names_served_metrics_and_labels(
    live_metrics: dict[str, frozenset[str]], live_webhook_metrics: dict[str, frozenset[str]]
) -> None:
    queries = _deploy_queries()
    assert len(queries) > 30
    served = {**live_webhook_metrics, **live_metrics}
    problems = [problem for where, expr in queries for problem in promql.usage_problems(where, expr, served)]
    assert problems == []


def test_the_dashboard_and_rules_cover_the_autoscaling_gauges() -> None:
    used = {s.metric for _, expr in _deploy_queries() for s in promql.selectors(expr).selectors}
    assert {"cekura_steps_due", "cekura_oldest_due_seconds", "cekura_requests_lag"} <= used
    assert {"cekura_jobs_finished_total", "cekura_api_calls_total", "cekura_rate_limit_waits_total"} <= used
    assert {"cekura_poll_lateness_seconds_bucket", "cekura_jobs_in_flight", "cekura_live_worker_processes"} <= used
    assert "cekura_webhooks_total" in used
