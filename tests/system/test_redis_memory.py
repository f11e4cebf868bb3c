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

#: The maxmemory that makes the test Redis full: well below what a redis-server with a worker on it holds (about 2 MB).
FULL_AT_BYTES = 256 * 1024


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
    one of them becomes exactly one result event once memory is freed. The requests are queued while no worker
    runs, so that none is handled before Redis is full: the worker that then starts meets OOM on all of them."""
    server = system.redis()
    sim = system.simulator()
    env = system.worker_env(server, sim)
    first = system.worker(env, processes=1, threads=2)
    with server.client() as raw:
        submit_via_stream(raw, {"kind": "agent.auto_fetch", "params": {"agent_id": 1}, "job_id": "before-full"})
        wait_all_finished(raw, {"before-full"}, timeout=60)
        first.stop()
        requests = [f"while-full-{i}" for i in range(40)]
        for job_id in requests:
            submit_via_stream(raw, {"kind": "agent.auto_fetch", "params": {"agent_id": 2}, "job_id": job_id})
        # Redis is full: a maxmemory of 256 KiB, below what it holds, refuses every write that needs memory
        # (noeviction), however the memory it uses moves meanwhile (a limit just under its use was passed again once
        # the first worker's connections were gone).
        assert int(raw.info("memory")["used_memory"]) > FULL_AT_BYTES * 2
        raw.config_set("maxmemory", FULL_AT_BYTES)
        run = system.worker(env, processes=1, threads=2)
        wait_for(lambda: run.count("intake_redis_error") >= 1, timeout=30, what="the intake to meet OOM")
        assert raw.xlen("cekura:requests") == len(requests), "a request was taken off the stream while Redis was full"
        assert not {e["job_id"] for e in result_events(raw)} & set(requests)
        raw.config_set("maxmemory", 0)  # memory frees
        finished = wait_all_finished(raw, set(requests), timeout=60)
        assert all(event["status"] == "completed" for event in finished.values())
        assert_exactly_one_event_each(raw, {"before-full", *requests})
    assert run.popen.poll() is None, "the worker stopped"
