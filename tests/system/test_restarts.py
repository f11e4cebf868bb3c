"""Restarts: Redis goes away and comes back, and the workers are stopped with SIGTERM mid-run; no job is lost or
finished twice."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Simulator, System

pytestmark = pytest.mark.slow

#: Jobs per Redis restart: enough that many are mid-flight when the disruption comes.
JOBS = 60

#: Jobs in the SIGTERM test, where every call is slow: enough to keep the threads busy, few enough to finish soon.
SIGTERM_JOBS = 40


def test_jobs_survive_redis_restarts_without_restarting_the_worker(system: System) -> None:
    server = system.redis(persistent=True)
    sim = system.simulator("--duration", "2")
    worker = system.worker(system.worker_env(server, sim), processes=2, threads=4)
    pids = worker.worker_pids()
    assert len(pids) == 2
    client = system.client(server)
    jobs = {}
    # An operator's restart (SHUTDOWN: the AOF is flushed), then a crash that keeps Redis away for longer than the
    # client's connection retries last (about 3 s): each while jobs are being polled.
    for how, down_s in (("shutdown", 1.0), ("kill", 4.5)):
        batch = system.submit_mix(server, client, system.job_mix(JOBS // 2), prefix=f"redis-{how}", deadline_s=90)
        jobs.update(batch)
        target = sim.stats()["polls_total"] + JOBS // 2
        system.wait_for(_polled(sim, target), timeout=30, what="the new jobs to be polling")
        with server.client() as raw:
            unfinished = set(batch) - {e["job_id"] for e in system.result_events(raw)}
        assert unfinished, f"every job finished before the {how}: nothing was tested"
        if how == "shutdown":
            server.shutdown()
        else:
            server.kill()
        time.sleep(down_s)
        server.start()

    with server.client() as raw:
        finished = system.wait_all_finished(raw, set(jobs), timeout=60, worker=worker)
        time.sleep(2.5)  # past the reconcile grace: a late duplicate would show up now
        system.assert_exactly_one_event_each(raw, set(jobs))
        dead_lettered = system.assert_nothing_left_behind(raw, set(jobs))
    wrong = {
        job_id: (spec.expect, finished[job_id]["status"])
        for job_id, spec in jobs.items()
        if not spec.ended_as_expected(finished[job_id])
    }
    assert not wrong, f"jobs with the wrong outcome (expected, got): {wrong}"
    assert worker.popen.poll() is None
    assert worker.worker_pids() == pids, "a worker process died and was restarted:\n" + worker.tail()
    assert worker.count("worker_process_died") == 0
    print(f"\nRedis restarts: {len(jobs)} jobs, {dead_lettered} Dramatiq messages dead-lettered during the outages")


def test_sigterm_stops_the_group_in_time_and_a_new_worker_finishes_every_job(system: System) -> None:
    shutdown_timeout_s = 4.0
    kill_grace_s = 3.0  # worker/runtime/supervisor.py DEFAULT_KILL_GRACE_S, the documented bound's extra
    server = system.redis()
    # Slow answers and some that hang past the HTTP timeout, so calls are in flight when SIGTERM comes.
    sim = system.simulator("--duration", "2", "--latency-ms", "100", "--hang-rate", "0.1", "--hang-s", "10")
    env = system.worker_env(server, sim, CEKURA_SHUTDOWN_TIMEOUT_S=str(shutdown_timeout_s))
    first = system.worker(env, processes=2, threads=4)
    client = system.client(server)
    jobs = system.submit_mix(server, client, system.job_mix(SIGTERM_JOBS), prefix="sigterm", deadline_s=90)
    system.wait_for(_polled(sim, SIGTERM_JOBS // 2), timeout=30, what="jobs to be polling")

    started = time.monotonic()
    os.kill(first.pid, signal.SIGTERM)  # as `docker stop` does: the supervisor only
    bound_s = shutdown_timeout_s + kill_grace_s
    system.wait_for(
        lambda: first.popen.poll() is not None and not system.group_alive(first.pid),
        timeout=bound_s + 5,
        interval=0.05,
        what="the worker's process group to exit after SIGTERM",
    )
    elapsed = time.monotonic() - started
    assert elapsed <= bound_s + 1.0, f"the group took {elapsed:.1f}s to exit; the bound is {bound_s:g}s"
    assert first.popen.returncode == 0, first.tail()
    assert first.count("worker_process_killed") == 0, "a worker process had to be killed:\n" + first.tail()
    assert first.count("supervisor_stopped") == 1
    with server.client() as raw:
        unfinished = set(jobs) - {e["job_id"] for e in system.result_events(raw)}
        # Messages the stopped processes took from Redis and neither ran nor handed back: they wait for Dramatiq's
        # heartbeat timeout or the reconciler (reported, not asserted: it depends on timing).
        stranded = sum(raw.scard(key) for key in raw.scan_iter("cekura:dramatiq:__acks__.*"))
    assert unfinished, "every job finished during shutdown: the restart was not tested"
    print(
        f"\nSIGTERM: group gone {elapsed:.2f}s after the signal (bound {bound_s:g}s); {len(unfinished)} jobs "
        f"unfinished; {stranded} messages left in stopped workers' ack sets"
    )

    sim.set_faults(hang_rate=0, latency_ms=0)
    second = system.worker(env, processes=2, threads=4)
    with server.client() as raw:
        finished = system.wait_all_finished(raw, set(jobs), timeout=60, worker=second)
        time.sleep(2.5)
        system.assert_exactly_one_event_each(raw, set(jobs))
        system.assert_nothing_left_behind(raw, set(jobs))
    wrong = {
        job_id: (spec.expect, finished[job_id]["status"])
        for job_id, spec in jobs.items()
        if not spec.ended_as_expected(finished[job_id])
    }
    assert not wrong, f"jobs with the wrong outcome (expected, got): {wrong}"
    system.assert_log_shape(first.lines() + second.lines())


def _polled(sim: Simulator, count: int) -> Callable[[], bool]:
    """True once the simulator has counted `count` progress GETs."""
    return lambda: int(sim.stats()["polls_total"]) >= count
