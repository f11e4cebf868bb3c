"""`/metrics` of a real `cekura-worker run --processes 2`: counters add up across the processes and agree with what
the Cekura simulator saw, and the Redis gauges describe the fleet.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from config.settings import Settings
from simulator import SimulatorHandle
from tests.support import free_port, running_workers, service_env, wait_for
from worker.client import Client
from worker.runtime.heartbeat import live_workers, workers_key

STREAM_JOBS = 6
CLIENT_JOBS = 12
PROCESSES = 2

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(port: int) -> Samples:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, tags), value in samples.items() if sample == name and wanted <= tags)


def _answered(by_route: Mapping[str, int], route: str) -> int:
    """Successful answers the simulator gave on `route` (its stats are keyed "<route> <status>")."""
    return sum(count for key, count in by_route.items() if key in (f"{route} 200", f"{route} 201", f"{route} 202"))


@pytest.mark.slow
def test_metrics_add_up_across_worker_processes(
    sim: SimulatorHandle, settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    port = free_port()
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left by an earlier run")  # must be cleared, not merged
    settings = settings.model_copy(update={"cekura_heartbeat_interval_s": 1.0, "cekura_metrics_port": port})
    env = service_env(settings, cekura_idle_wake_ms=100, cekura_shutdown_timeout_s=5, log_level="WARNING")
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    log_path = tmp_path / "worker.log"
    total = STREAM_JOBS + CLIENT_JOBS

    with running_workers(env, log_path, processes=PROCESSES) as supervisor, Client(settings) as client:
        wait_for(lambda: len(live_workers(redis_client, settings)) == PROCESSES, 30, "both worker processes", log_path)
        stream_ids = [f"via-stream-{i}" for i in range(STREAM_JOBS)]
        for job_id in stream_ids:
            request = {"kind": "agent.auto_fetch", "params": {"agent_id": 5}, "job_id": job_id}
            redis_client.xadd(settings.cekura_requests_stream, {"request": json.dumps(request)})
        client_ids = [client.submit("agent.auto_fetch", {"agent_id": 7}) for _ in range(CLIENT_JOBS)]
        # The intake records stream requests asynchronously.
        wait_for(lambda: all(client.status(job_id) for job_id in stream_ids), 20, "stream jobs recorded", log_path)
        for job_id in stream_ids + client_ids:
            assert client.wait(job_id, timeout=30)["status"] == "completed"

        # A job's counter is bumped just after its result event is written: give the last ones a moment.
        wait_for(
            lambda: _total(_scrape(port), "cekura_jobs_finished_total") >= total, 10, "the last counters", log_path
        )
        samples = _scrape(port)
        workers = [member.decode().rsplit(":", 1)[1] for member in redis_client.zrange(workers_key(settings), 0, -1)]
        sim_stats = sim.stats()["by_route"]

        os.killpg(supervisor.pid, signal.SIGTERM)
        assert supervisor.wait(20) == 0

    assert _total(samples, "cekura_jobs_finished_total") == total
    assert _total(samples, "cekura_jobs_finished_total", kind="agent.auto_fetch", outcome="completed") == total
    assert _total(samples, "cekura_job_duration_seconds_count", kind="agent.auto_fetch") == total
    # Only submissions through the request stream happen inside the workers; the client counts its own.
    assert _total(samples, "cekura_jobs_submitted_total", kind="agent.auto_fetch") == STREAM_JOBS

    starts = _total(samples, "cekura_api_calls_total", endpoint="start", status="ok")
    progress = _total(samples, "cekura_api_calls_total", endpoint="progress", status="ok")
    assert starts == _answered(sim_stats, "auto-fetch") == total
    assert progress == _answered(sim_stats, "auto-fetch-progress")
    assert progress >= total
    assert _total(samples, "cekura_poll_lateness_seconds_count") > 0

    # Fleet-wide gauges read from Redis at scrape time.
    assert _total(samples, "cekura_redis_up") == 1
    assert _total(samples, "cekura_jobs_in_flight") == 0
    assert _total(samples, "cekura_live_worker_processes") == PROCESSES
    assert _total(samples, "cekura_stream_length", stream="results") == total
    assert _total(samples, "cekura_queue_messages", state="dead") == 0

    # Each process kept its own counts in its own file, and both did part of the work.
    per_process = {}
    for pid in workers:
        files = [str(path) for path in metrics_dir.glob(f"*_{pid}.db")]
        merged = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
        per_process[pid] = sum(
            s.value for metric in merged for s in metric.samples if s.name == "cekura_jobs_finished_total"
        )
    assert len(per_process) == PROCESSES
    assert all(count > 0 for count in per_process.values()), per_process
    assert sum(per_process.values()) == total
    assert not (metrics_dir / "counter_1.db").exists()
