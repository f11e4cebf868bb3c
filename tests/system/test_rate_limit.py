"""The fleet-wide rate limit: CEKURA_RATE_LIMIT_RPS caps the calls of all worker processes together, and a 429 from
Cekura pauses every process until its Retry-After has passed."""

from __future__ import annotations

import contextlib
import time
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
    assert stats["requests_total"] >= 3 * jobs_count
    # GCRA admits at most rps * 1 s + burst calls in any second; the tolerance covers the time between a call's
    # claim in Redis and its arrival at the simulator (scheduling jitter on a busy machine: `make test` runs two
    # pytest workers side by side, and one run here counted 63 against the 62 a 10 % tolerance allowed). Without
    # the limiter, two processes of 4 threads make several hundred calls a second against this simulator.
    tolerance = 2 + rps // 5
    assert stats["max_rps_1s"] <= rps + burst + tolerance, (
        f"{stats['max_rps_1s']} calls in one second; cap {rps} + burst {burst} (+{tolerance} tolerance)"
    )
    deferred = [e for e in worker.events() if e["event"] == "cekura_call_deferred" and e["reason"] == "rate_limit"]
    assert deferred, "the limiter never deferred a call: the cap was not exercised"
    print(
        f"\nrate cap: max_rps_1s={stats['max_rps_1s']} cap={rps} burst={burst} calls={stats['requests_total']} "
        f"deferred={len(deferred)}"
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
    with server.client() as raw:
        sim.set_faults(rate_429=1.0, retry_after_s=3)
        system.wait_for(lambda: raw.exists(cooldown_key) == 1, timeout=10, interval=0.01, what="the cooldown key")
        sim.set_faults(rate_429=0.0)
        remaining_s = _cooldown_left_s(raw, cooldown_key)
        assert remaining_s > 1.8, f"cooldown of only {remaining_s:.2f}s after a Retry-After of 3s"

        time.sleep(0.5)  # calls that were already on the wire when the 429 came
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
