"""`cekura-worker dead list` reads the results stream bounded in bytes: large completed events cost it their small
fields, not their results (issue 19: 200 events of 1 MiB read 1,000 whole events per batch, at a peak of 251 MiB)."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator

import pytest
import redis

from config.settings import Settings, get_settings
from tests.conftest import SIM_KEY
from worker.cli import EXIT_OK, main
from worker.ops import dead

MIB = 1_048_576

#: Completed events of 1 MiB each between the failed ones: 64 MiB that a listing must not read.
LARGE_EVENTS = 64

#: The most Python memory a listing may take at its peak: well above what it needs (its small fields, a batch
#: at a time), well below the whole events the old listing read (64 MiB).
PEAK_BOUND = 8 * MIB


@pytest.fixture(autouse=True)
def _cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[None]:
    monkeypatch.setenv("REDIS_URL", settings.redis_url.get_secret_value())
    monkeypatch.setenv("CEKURA_API_URL", settings.cekura_api_url)
    monkeypatch.setenv("CEKURA_API_KEY", SIM_KEY)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def event(job_id: str, status: str, **fields: str) -> dict[str, str]:
    base = {"job_id": job_id, "kind": "agent.auto_fetch", "status": status, "finished_at": "2025-01-01T00:00:00.000Z"}
    return {**base, **fields}


def fill(client: redis.Redis, settings: Settings) -> None:
    """Oldest first: a timed-out job, half the large completed events, a failed job whose error is 1 MiB, the
    other half, and a failed job."""
    stream = settings.cekura_results_stream
    big = "r" * MIB
    client.xadd(stream, event("slow-1", "timed_out", error="deadline passed"))
    for half in ("a", "b"):
        pipe = client.pipeline(transaction=False)
        for i in range(LARGE_EVENTS // 2):
            pipe.xadd(stream, event(f"big-{half}{i}", "completed", result=big, error=""))
        pipe.execute()
        if half == "a":
            client.xadd(stream, event("loud-1", "failed", error="E" * MIB))
    client.xadd(stream, event("fail-1", "failed", error="simulated"))


def test_dead_list_finds_failed_jobs_among_large_completed_events_without_reading_them(
    redis_client: redis.Redis, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(redis_client, settings)

    tracemalloc.start()
    try:
        report = dead.report(redis_client, settings, since_s=3600)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < PEAK_BOUND, f"dead list took {peak / MIB:.1f} MiB at its peak"
    jobs = report["failed_jobs"]
    assert [job["job_id"] for job in jobs] == ["fail-1", "loud-1", "slow-1"]
    assert jobs[0]["error"] == "simulated"
    assert jobs[2]["error"] == "deadline passed"
    # An error too long to read whole comes back as its start, marked cut.
    assert jobs[1]["error"].startswith("EEEE") and jobs[1]["error"].endswith("...")
    assert len(jobs[1]["error"]) < 64 * 1024

    assert main(["dead", "list"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "Failed and timed-out jobs: 3 shown" in out
    assert main(["dead", "list", "--format", "json", "--limit", "2"]) == EXIT_OK
    listed = json.loads(capsys.readouterr().out)["failed_jobs"]
    assert [job["job_id"] for job in listed] == ["fail-1", "loud-1"]
