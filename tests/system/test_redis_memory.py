"""Redis memory (issue 20): an evicting `maxmemory-policy` is refused loudly, and a full Redis under `noeviction`
loses nothing: the intake pauses with requests left in their stream, jobs wait, and everything resumes when memory
frees. Each test runs its own `redis-server`."""

from __future__ import annotations

import json

import pytest

from tests.system.conftest import (
    System,
    assert_exactly_one_event_each,
    result_events,
    submit_via_stream,
    wait_all_finished,
    wait_for,
)

FILLER = "filler"


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_an_evicting_memory_policy_is_refused_at_start_up_and_fails_readiness_and_status_says_why(
    system: System, policy: str
) -> None:
    server = system.redis()
    with server.client() as raw:
        raw.config_set("maxmemory-policy", policy)
    sim = system.simulator()
    env = system.worker_env(server, sim)
    run, ready, status = system.cli_many(
        [
            (env, ["run", "--processes", "1"]),
            (env, ["healthcheck", "--readiness"]),
            (env, ["status", "--format", "json"]),
        ]
    )
    assert run.returncode != 0
    assert f"maxmemory-policy is '{policy}'" in run.stderr and "noeviction" in run.stderr, run.stderr
    assert ready.returncode != 0
    assert policy in ready.stdout + ready.stderr
    summary = json.loads(status.stdout)
    assert summary["redis_memory"]["policy"] == policy
    assert "noeviction" in summary["redis_memory"]["problem"]


def test_noeviction_is_accepted(system: System) -> None:
    server = system.redis()
    sim = system.simulator()
    env = system.worker_env(server, sim)
    status = system.cli(env, "status", "--format", "json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["redis_memory"] == {"policy": "noeviction", "problem": None}


def test_a_full_redis_loses_no_request_and_resumes_when_memory_frees(system: System) -> None:
    """Requests already in the stream when Redis fills up stay there (the intake's writes fail with OOM), and every
    one of them becomes exactly one result event once memory is freed."""
    server = system.redis()
    sim = system.simulator()
    env = system.worker_env(server, sim)
    run = system.worker(env, processes=1, threads=2)
    with server.client() as raw:
        submit_via_stream(raw, {"kind": "agent.auto_fetch", "params": {"agent_id": 1}, "job_id": "before-full"})
        wait_all_finished(raw, {"before-full"}, timeout=60)
        used = int(raw.info("memory")["used_memory"])
        raw.config_set("maxmemory", used + 2 * 1024 * 1024)
        requests = [f"while-full-{i}" for i in range(40)]
        # Fill Redis to its limit, then queue requests through a connection that may still write (the stream
        # entries are small; once full, only the filler can be deleted).
        raw.config_set("maxmemory", 0)
        for job_id in requests:
            submit_via_stream(raw, {"kind": "agent.auto_fetch", "params": {"agent_id": 2}, "job_id": job_id})
        raw.set(FILLER, b"x" * (4 * 1024 * 1024))
        raw.config_set("maxmemory", int(raw.info("memory")["used_memory"]) - 1024)
        wait_for(lambda: run.count("intake_redis_error") >= 1, timeout=30, what="the intake to meet OOM")
        waiting = raw.xlen("cekura:requests")
        assert waiting >= 1, "every request was taken off the stream although Redis was full"
        handled = {e["job_id"] for e in result_events(raw)} & set(requests)
        assert len(handled) <= len(requests) - waiting  # what waits in the stream has no event yet
        raw.delete(FILLER)
        raw.config_set("maxmemory", 0)
        finished = wait_all_finished(raw, set(requests), timeout=60)
        assert all(event["status"] == "completed" for event in finished.values())
        assert_exactly_one_event_each(raw, {"before-full", *requests})
    assert run.popen.poll() is None, "the worker stopped"
