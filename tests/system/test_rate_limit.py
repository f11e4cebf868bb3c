"""The fleet-wide rate limit: CEKURA_RATE_LIMIT_RPS caps the calls of all worker processes together, and a 429 from
Cekura pauses every process until its Retry-After has passed."""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import psutil
import pytest
import redis

if TYPE_CHECKING:
    from conftest import Simulator, System, WorkerRun

pytestmark = pytest.mark.slow

COMPLETING = [
    ("agent.auto_fetch", {"agent_id": 5}),
    ("agent.toggle_mock_tools", {"agent_id": 6, "enabled": True}),
    ("scenario.agent", {"user_message": "more detail"}),
    ("metric.clean_description", {"agent": 1, "metric_description": "hi", "eval_type": "rating"}),
]


def test_two_processes_together_stay_under_the_rate_cap_and_every_job_completes(system: System) -> None:
    rps, burst, jobs_count = 50, 5, 150
    server = system.redis()
    sim = system.simulator("--polls", "2")  # a start and two progress GETs per job
    env = system.worker_env(
        server,
        sim,
        CEKURA_RATE_LIMIT_RPS=str(rps),
        CEKURA_RATE_LIMIT_BURST=str(burst),
        CEKURA_POLL_INITIAL_S="0.05",
        CEKURA_POLL_MAX_S="0.2",
        LOG_LEVEL="DEBUG",
    )
    worker = system.worker(env, processes=2, threads=4)
    client = system.client(server)
    jobs = set()
    for i in range(jobs_count):
        kind, params = COMPLETING[i % len(COMPLETING)]
        jobs.add(client.submit(kind, params, job_id=f"capped-{i:04d}", deadline_s=120))

    with server.client() as raw:
        finished = system.wait_all_finished(raw, jobs, timeout=90, worker=worker)
        system.assert_exactly_one_event_each(raw, jobs)
    assert {event["status"] for event in finished.values()} == {"completed"}

    stats = sim.stats()
    calls = stats["requests_total"]
    assert calls >= 3 * jobs_count
    # What the limiter guarantees: each call is made at or after a slot it claimed in Redis, and GCRA spaces those
    # slots so that any n of them span at least (n - burst) / rps seconds of the Redis server's clock. Every slot
    # here lies between the first submission and the last finish (both stamped by Redis's clock: a claim comes
    # after its job's submission, and a job finishes after its last call), so the calls the simulator saw must fit
    # in that span. Scheduling delays only make the span longer, so this cannot fail on a busy machine (the calls
    # per second the simulator counts can: reserved slots used late bunch on arrival), yet it fails if the cap
    # were off: without the limiter, two processes of 4 threads make several hundred calls a second.
    first_submitted_ms = min(_epoch_ms(event["submitted_at"]) for event in finished.values())
    last_finished_ms = max(_epoch_ms(event["finished_at"]) for event in finished.values())
    span_ms = last_finished_ms - first_submitted_ms
    assert (calls - burst) * 1000 <= rps * span_ms, (
        f"{calls} Cekura calls within {span_ms} ms (first submission to last finish, Redis clock): over the cap of "
        f"{rps}/s + burst {burst}, which allows {burst + rps * span_ms // 1000}"
    )
    deferred = [e for e in worker.events() if e["event"] == "cekura_call_deferred" and e["reason"] == "rate_limit"]
    assert deferred, "the limiter never deferred a call: the cap was not exercised"
    print(
        f"\nrate cap: calls={calls} in {span_ms} ms, cap={rps} burst={burst}, "
        f"max_rps_1s at the simulator={stats['max_rps_1s']}, deferred={len(deferred)}"
    )


def test_a_429_pauses_both_worker_processes_until_retry_after(system: System) -> None:
    server = system.redis()
    sim = system.simulator("--duration", "5")
    worker = system.worker(system.worker_env(server, sim, CEKURA_POLL_MAX_S="0.3"), processes=2, threads=4)
    client = system.client(server)
    jobs = {client.submit(*COMPLETING[i % len(COMPLETING)], job_id=f"cool-{i:03d}", deadline_s=120) for i in range(40)}
    # Both processes are calling Cekura before the 429 comes.
    system.wait_for(lambda: len(_calling_sim(worker, sim)) == 2, timeout=30, what="both processes to call Cekura")

    cooldown_key = "cekura:ratelimit:cooldown"
    retry_after_s = 5  # longer than a lease: the watch below has time left even if it waits for one to lapse
    with server.client() as raw:
        before_ms = _redis_ms(raw)
        sim.set_faults(rate_429=1.0, retry_after_s=retry_after_s)
        system.wait_for(lambda: raw.exists(cooldown_key) == 1, timeout=10, interval=0.01, what="the cooldown key")
        sim.set_faults(rate_429=0.0)
        # The first hold was set after `before_ms` (both by Redis's clock), however long this process took to see it.
        held_ms = int(raw.get(cooldown_key) or 0) - before_ms
        assert held_ms >= (retry_after_s - 1) * 1000, f"a cooldown of {held_ms} ms after Retry-After: {retry_after_s}"

        # Calls granted before the hold may still be on their way (a thread preempted between its claim and its
        # request, a poll claimed at fetch that waits for a free thread): each holds its job's lease until its
        # outcome is recorded (or the lease lapses). Once no lease is held, every call granted before the hold has
        # reached the simulator, and none may be granted until the hold ends.
        system.wait_for(
            lambda: _in_flight(raw, jobs, cooldown_key) == 0,
            timeout=30,
            what="the calls granted before the cooldown to be answered",
        )
        during = sim.stats()["requests_total"]
        # Until the cooldown (as it stands now: a later 429 may have moved it) has nearly passed, nobody calls.
        checks = 0
        while _cooldown_left_s(raw, cooldown_key) > 0.3:
            calls = sim.stats()["requests_total"] - during
            if _cooldown_left_s(raw, cooldown_key) > 0.3:
                assert calls == 0, f"{calls} Cekura calls were made during the fleet-wide cooldown"
                checks += 1
            time.sleep(0.1)
        assert checks >= 3, "the cooldown was over before it could be watched"
        after_pause = sim.stats()["requests_total"]

        finished = system.wait_all_finished(raw, jobs, timeout=60, worker=worker)
        system.assert_exactly_one_event_each(raw, jobs)
    assert sim.stats()["requests_total"] > after_pause
    assert {event["status"] for event in finished.values()} == {"completed"}
    assert len(worker.worker_pids()) == 2


def _epoch_ms(iso: str) -> int:
    """An event's ISO 8601 time with milliseconds (`2026-11-23T12:00:00.123Z`, Redis's clock) in epoch ms."""
    return round(datetime.fromisoformat(iso).timestamp() * 1000)


def _redis_ms(raw: redis.Redis) -> int:
    """The Redis server's clock in epoch ms."""
    seconds, micros = raw.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _in_flight(raw: redis.Redis, jobs: set[str], cooldown_key: str) -> int:
    """How many of `jobs` hold a live lease (a call granted and its outcome not yet recorded), read in one
    transaction with the Redis server's clock; 0 as well once the cooldown has (nearly) passed, when new leases are
    granted again and waiting longer is no use (the watch that follows then fails: it had nothing to watch)."""
    with raw.pipeline(transaction=True) as pipe:
        pipe.time()
        pipe.get(cooldown_key)
        for job_id in jobs:
            pipe.hget(f"cekura:job:{job_id}", "lease")
        (seconds, micros), until, *leases = pipe.execute()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    if int(until or 0) - now_ms <= 300:
        return 0
    return sum(1 for lease in leases if int(lease or 0) > now_ms)


def _cooldown_left_s(raw: redis.Redis, key: str) -> float:
    """Seconds until the fleet-wide cooldown ends, by the Redis server's clock (0 when none is set)."""
    until_ms = int(raw.get(key) or 0)
    seconds, micros = raw.time()
    return max(0.0, until_ms / 1000 - (float(seconds) + float(micros) / 1e6))


def _calling_sim(worker: WorkerRun, sim: Simulator) -> set[int]:
    """Worker pids holding a TCP connection to the simulator."""
    port = urlsplit(sim.url).port
    pids = set()
    for pid in worker.worker_pids():
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.raddr and conn.raddr.port == port:
                    pids.add(pid)
    return pids
