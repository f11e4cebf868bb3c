"""`cekura-worker status` (no job id) and the scrape-time Redis gauges: what they report about real jobs in Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dramatiq
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from config.settings import Settings, load_settings
from tests.support import service_env
from worker.client import Client
from worker.intake.stream import Intake
from worker.ops.exposition import build_registry
from worker.ops.summary import render_table, summarize
from worker.runtime.app import Runtime
from worker.runtime.heartbeat import Heartbeat


def _gauges(settings: Settings, tmp_path: Path) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    registry = build_registry(settings, str(tmp_path))
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_summary_counts_queued_jobs_by_kind(settings: Settings, redis_client: redis.Redis, tmp_path: Path) -> None:
    with Client(settings) as client:  # no worker runs: every job waits in the queue
        for agent_id in (1, 2, 3):
            client.submit("agent.auto_fetch", {"agent_id": agent_id})
        for message in ("a", "b"):
            client.submit("scenario.agent", {"user_message": message})
        client.submit("agent.auto_fetch", {"agent_id": 4}, deadline_s=60)

    summary = summarize(redis_client, settings)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["jobs_in_flight"] == {
        "total": 6,
        "by_kind": {"agent.auto_fetch": {"queued": 4}, "scenario.agent": {"queued": 2}},
    }
    assert summary["queues"] == {settings.cekura_queue: {"ready": 6, "delayed": 0, "unacked": 0, "dead": 0}}
    assert summary["schedule"] == {"active": 6, "overdue": 0, "oldest_overdue": None}
    assert summary["streams"]["results"]["length"] == 0
    assert summary["streams"]["requests"] == {"name": settings.cekura_requests_stream, "length": 0, "group": None}
    assert summary["workers"] == {"live": 0, "processes": []}

    table = render_table(summary)
    assert "Jobs in flight: 6" in table
    assert [line.split() for line in table.splitlines() if line.strip().startswith("agent.auto_fetch")] == [
        ["agent.auto_fetch", "4", "0", "0", "0", "4"]
    ]
    assert "no consumer group yet" in table

    gauges = _gauges(settings, tmp_path)
    assert gauges[("cekura_redis_up", frozenset())] == 1
    assert gauges[("cekura_jobs_in_flight", frozenset({("kind", "agent.auto_fetch"), ("state", "queued")}))] == 4
    assert gauges[("cekura_jobs_in_flight", frozenset({("kind", "scenario.agent"), ("state", "queued")}))] == 2
    assert (
        gauges[("cekura_jobs_in_flight", frozenset({("kind", "metric.clean_description"), ("state", "polling")}))] == 0
    )
    ready = frozenset({("queue", settings.cekura_queue), ("state", "ready")})
    assert gauges[("cekura_queue_messages", ready)] == 6


def test_summary_shows_the_most_overdue_job(settings: Settings, redis_client: redis.Redis) -> None:
    settings = load_settings(**{**settings.model_dump(), "cekura_reconcile_grace_s": 0.05})
    with Client(settings) as client:  # no worker and no reconciler: the jobs fall overdue and stay so
        first = client.submit("agent.auto_fetch", {"agent_id": 1})
        time.sleep(0.05)
        client.submit("agent.auto_fetch", {"agent_id": 2})
    time.sleep(0.3)

    summary = summarize(redis_client, settings)
    schedule = summary["schedule"]
    assert schedule["active"] == 2
    assert schedule["overdue"] == 2
    assert schedule["oldest_overdue"]["job_id"] == first
    assert 0.25 <= schedule["oldest_overdue"]["overdue_s"] < 30
    assert f"oldest: job {first}, " in render_table(summary)


def test_summary_follows_polling_jobs_the_request_stream_and_workers(
    client: Client, rt: Runtime, worker: dramatiq.Worker, redis_client: redis.Redis
) -> None:
    settings = rt.settings
    # Agent 777 never finishes at the simulator: the job keeps polling while we look.
    job_id = client.submit("agent.toggle_mock_tools", {"agent_id": 777, "enabled": True})

    def polling() -> dict[str, Any] | None:
        summary = summarize(redis_client, settings)
        by_kind = summary["jobs_in_flight"]["by_kind"]
        if (
            by_kind.get("agent.toggle_mock_tools") == {"polling": 1}
            and summary["queues"][settings.cekura_queue]["delayed"]
        ):
            return summary
        return None

    deadline = time.monotonic() + 10
    while (summary := polling()) is None:
        assert time.monotonic() < deadline, summarize(redis_client, settings)
        time.sleep(0.02)
    assert summary["jobs_in_flight"]["total"] == 1

    intake = Intake(rt, name="test-consumer")
    intake.ensure_group()
    for n in range(3):
        redis_client.xadd(settings.cekura_requests_stream, {"request": json.dumps({"kind": "x", "n": n})})
    intake.client.xreadgroup(settings.cekura_intake_group, "test-consumer", {settings.cekura_requests_stream: ">"}, 1)
    Heartbeat(redis_client, settings, alive=lambda: True).beat()

    summary = summarize(redis_client, settings)
    requests = summary["streams"]["requests"]
    assert requests["length"] == 3
    assert requests["group"]["consumers"] == 1
    assert requests["group"]["pending"] == 1
    assert requests["group"]["lag"] == 2
    assert summary["workers"]["live"] == 1
    table = render_table(summary)
    assert "1 consumers, 1 pending, lag 2" in table
    assert "Workers: 1 live" in table

    client.cancel(job_id)
    assert summarize(redis_client, settings)["jobs_in_flight"] == {"total": 0, "by_kind": {}}
    assert summarize(redis_client, settings)["streams"]["results"]["length"] == 1


def test_status_command_prints_the_summary(settings: Settings, redis_client: redis.Redis, tmp_path: Path) -> None:
    with Client(settings) as client:
        client.submit("metric.clean_description", {"agent": 1, "metric_description": "d", "eval_type": "boolean"})
    env = service_env(settings)

    def status(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli", "status", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    as_json = json.loads(status("--format", "json"))
    assert as_json["jobs_in_flight"] == {"total": 1, "by_kind": {"metric.clean_description": {"queued": 1}}}
    assert as_json["redis"] == settings.redis_url_redacted
    table = status()
    assert "Jobs in flight: 1" in table
    assert "metric.clean_description" in table
