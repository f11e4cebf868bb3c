"""Chaos: jobs run through two worker processes while one of them is SIGKILLed again and again and the simulated
Cekura API fails in every way it can; afterwards every job has exactly one result event and polling stayed paced.

`make test` runs a short form (CHAOS_JOBS defaults to 150); `make test-chaos` runs `pytest -m chaos` with
CHAOS_JOBS=400 or more. The figures are printed (see them with `-s`).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections import Counter
from statistics import mean
from typing import TYPE_CHECKING

import psutil
import pytest
import redis

from actors.kinds import KINDS
from tests.support import wait_for

if TYPE_CHECKING:
    from conftest import System, WorkerRun

#: See conftest.UNKNOWN_START (conftest is not importable by name from a test module).
UNKNOWN_START = "the start call's outcome is unknown"

#: How many jobs the run submits.
CHAOS_JOBS = int(os.environ.get("CHAOS_JOBS", "150"))

#: How many times a worker process is SIGKILLed: a few in the short form, more in the long one.
KILLS = max(4, CHAOS_JOBS // 60)

#: Kill even while the intake may hold request-stream entries. An entry read by a process that dies waits for
#: XAUTOCLAIM (30 s idle, checked every 15 s: `worker/intake/stream.py`), which costs up to ~45 s, so only the long form
#: does it; the short form lets the intake drain the stream before each kill.
BLIND_KILLS = CHAOS_JOBS >= 300

#: How long a simulated Cekura job runs before its progress turns terminal.
DURATION_S = 2.0

#: The worker's polling schedule (see FAST_ENV in conftest.py): initial, factor, cap, jitter.
POLL_INITIAL_S, POLL_FACTOR, POLL_MAX_S, POLL_JITTER = 0.1, 1.5, 0.5, 0.1

#: Faults the simulator injects: shares of operation requests (each request draws at most one), plus latency.
FAULTS = (
    "--error-rate", "0.08",  # 500 / 502 / 503
    "--rate-429", "0.003",  # 429 with Retry-After (delta-seconds and HTTP-date); every one pauses the whole fleet
    "--retry-after", "1",
    "--drop-rate", "0.03",  # connection closed without an answer
    "--hang-rate", "0.02",  # answered after --hang-s, past CEKURA_HTTP_TIMEOUT_S
    "--hang-s", "2",
    "--unknown-status-rate", "0.05",  # a progress answer with the status word "paused"
    "--malformed-rate", "0.003",  # a 200 that is not JSON: the job ends `failed` by design
    "--latency-ms", "20",  # so worker threads are mid-call when a kill comes
)  # fmt: skip


def schedule_polls(duration_s: float) -> int:
    """The most progress GETs the backoff schedule allows before a job of `duration_s` turns terminal.

    Every delay at its shortest (full negative jitter): poll k comes at least sum of d_1..d_k after the start call,
    and the first poll at or after `duration_s` sees the terminal status.
    """
    elapsed, polls = 0.0, 0
    while elapsed < duration_s:
        polls += 1
        elapsed += min(POLL_MAX_S, POLL_INITIAL_S * POLL_FACTOR ** (polls - 1)) * (1 - POLL_JITTER)
    return polls


#: Threads per worker process; one that runs more threads than this has its Dramatiq worker threads up.
THREADS = 4
WORKING_THREADS = THREADS

pytestmark = [pytest.mark.slow, pytest.mark.chaos]


@pytest.mark.timeout(120 + CHAOS_JOBS // 4)
def test_every_job_ends_exactly_once_through_worker_kills_and_cekura_faults(system: System) -> None:
    rng = random.Random(20261123)
    began = time.monotonic()
    server = system.redis()
    sim = system.simulator("--duration", str(DURATION_S), "--seed", "7", *FAULTS)
    env = system.worker_env(server, sim, CEKURA_HTTP_TIMEOUT_S="1", LOG_LEVEL="INFO")
    worker = system.worker(env, processes=2, threads=THREADS)
    client = system.client(server)

    specs = system.job_mix(CHAOS_JOBS)
    rng.shuffle(specs)
    size = max(1, CHAOS_JOBS // KILLS)
    jobs = {}
    kills = 0
    with server.client() as raw:
        for number, start in enumerate(range(0, CHAOS_JOBS, size)):
            jobs.update(
                system.submit_mix(
                    server, client, specs[start : start + size], prefix=f"chaos-w{number}", deadline_s=100
                )
            )
            if not BLIND_KILLS:  # see BLIND_KILLS: let the intake take this wave before the next kill
                system.wait_for(lambda: raw.xlen("cekura:requests") == 0, timeout=30, what="the intake to drain")
            if kills < KILLS:
                kills += _kill_one(worker, rng, raw, server.port)
        while kills < KILLS:
            kills += _kill_one(worker, rng, raw, server.port)

    with server.client() as raw:
        finished = system.wait_all_finished(raw, set(jobs), timeout=100, worker=worker)
        time.sleep(3.0)  # past lease + grace: a late duplicate event would show up now
        system.assert_exactly_one_event_each(raw, set(jobs))
        dead_lettered = system.assert_nothing_left_behind(raw, set(jobs))

    outcomes = Counter(event["status"] for event in finished.values())
    wrong = {
        job_id: (spec.expect, finished[job_id]["status"], finished[job_id]["error"][:120])
        for job_id, spec in jobs.items()
        if not spec.ended_as_expected(finished[job_id]) and not _malformed_answer(finished[job_id])
    }
    assert not wrong, f"{len(wrong)} jobs ended otherwise than the simulator steered them: {list(wrong.items())[:10]}"

    # Polling stayed paced. Per job: the simulator's progress GETs against what the backoff schedule allows; a GET
    # that hung past the HTTP timeout, or was cut off by a kill, is retried and so counts twice.
    stats = sim.stats()
    polls = sim.polls()
    allowed = schedule_polls(DURATION_S)
    polled = [event for event in finished.values() if event["progress_id"]]
    assert polled, "no job reached the polling phase"
    per_job = [len(polls[event["progress_id"]]["times"]) for event in polled]
    over = [n for n in per_job if n > allowed + 4]
    assert not over, f"{len(over)} jobs were polled more than the {allowed} (+4) GETs the schedule allows: {over[:10]}"
    # And in total, the simulator served the polls the workers recorded, give or take the faults: no GET was made
    # by a duplicate or superseded message. Simulator-only GETs: hung answers and calls cut off by a kill;
    # worker-only polls: "paused" answers, which the simulator doesn't count.
    faults = stats["faults_injected"]
    served, recorded = sum(per_job), sum(int(event["polls"]) for event in polled)
    assert served <= recorded + faults["hang"] + kills * THREADS, f"{served} GETs served, {recorded} recorded"
    assert served >= recorded - faults["unknown_status"], f"{served} GETs served, {recorded} recorded"

    # Starts that must not be repeated were not: each such job's start reached Cekura at most once. Its unique
    # key (the job id in an evaluator run's name, say) counts the operations Cekura started for it.
    once = {name for name, kind in KINDS.items() if not kind.repeatable_start}
    keys = Counter(entry["key"] for entry in polls.values() if entry.get("key") and entry["key"].startswith("chaos-"))
    twice = {key: n for key, n in keys.items() if n > 1}
    assert not twice, f"{len(twice)} starts that must not be repeated were repeated: {list(twice.items())[:10]}"
    once_jobs = [job_id for job_id, spec in jobs.items() if spec.kind in once]
    unknown = [job_id for job_id in once_jobs if UNKNOWN_START in finished[job_id]["error"]]
    assert keys, "no start of a kind that must not repeat reached the simulator"

    assert worker.count("worker_process_died") == kills
    records = system.assert_log_shape(worker.lines())
    figures = {
        "jobs": len(jobs),
        "outcomes": dict(sorted(outcomes.items())),
        "cekura_calls": stats["requests_total"],
        "calls_by_route": stats["by_route"],
        "faults_injected": {k: v for k, v in stats["faults_injected"].items() if v},
        "cekura_starts": stats["started_jobs"],
        "duplicate_starts": stats["started_jobs"] - sum(1 for e in finished.values() if e["progress_id"]),
        "jobs_whose_start_must_not_repeat": len(once_jobs),
        "their_duplicate_starts": sum(n - 1 for n in keys.values()),
        "their_starts_failed_as_unknown": len(unknown),
        "lost_evaluator_starts_looked_for": sum(1 for r in records if r["event"] == "start_outcome_unknown_looking"),
        "lost_evaluator_starts_found_by_tag": sum(1 for r in records if r["event"] == "lost_start_found"),
        "polls_served": served,
        "polls_recorded": recorded,
        "polls_per_job_max": max(per_job),
        "polls_per_job_mean": round(mean(per_job), 2),
        "polls_allowed_by_schedule": allowed,
        "kills": kills,
        "rescheduled_by_reconciler": sum(1 for r in records if r["event"] == "job_rescheduled"),
        "intake_entries_reclaimed": sum(1 for r in records if r["event"] == "intake_entry_reclaimed"),
        "malformed_answer_failures": sum(1 for e in finished.values() if _malformed_answer(e)),
        "dead_lettered_messages": dead_lettered,
        "seconds": round(time.monotonic() - began, 1),
    }
    print("\nchaos figures:", figures)


def _kill_one(worker: WorkerRun, rng: random.Random, raw: redis.Redis, redis_port: int) -> int:
    """Once both worker processes are at work, wait 1-2 s and SIGKILL one (the supervisor restarts it).

    Returns 1 if one was killed, 0 if none was at work when the moment came. A process still importing holds no
    messages, so killing it would test nothing; and waiting for both keeps one process serving while the other is
    down, as in a real crash.
    """
    deadline = time.monotonic() + 60
    while len(working := _working(worker)) < 2:
        if time.monotonic() > deadline:
            pytest.fail(f"the supervisor did not bring both worker processes back within 60s:\n{worker.tail()}")
        time.sleep(0.1)
    time.sleep(rng.uniform(1.0, 2.0))
    working = _working(worker)
    if not working:
        return 0
    victim = psutil.Process(rng.choice(working))
    ports: set[int] = set()  # its connections to Redis
    with contextlib.suppress(psutil.Error):
        ports = {c.laddr.port for c in victim.net_connections(kind="tcp") if c.raddr and c.raddr.port == redis_port}
    victim.send_signal(signal.SIGKILL)
    # Until Redis has dropped the dead process's connections, it may still hand the dead consumer a request-stream
    # entry (which then waits ~45 s for XAUTOCLAIM): wait until Redis no longer lists any of them as a client.
    wait_for(
        lambda: not ports & {int(c["addr"].rsplit(":", 1)[1]) for c in raw.client_list()},
        what="Redis to drop the killed process's connections",
    )
    return 1


def _working(worker: WorkerRun) -> list[int]:
    """Pids of worker processes whose Dramatiq threads are up (more threads than the main one and a few)."""
    working = []
    for pid in worker.worker_pids():
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).num_threads() > WORKING_THREADS:
                working.append(pid)
    return working


def _malformed_answer(event: dict[str, str]) -> bool:
    """A job the simulator's malformed-body fault failed, permanently by design."""
    return event["status"] == "failed" and "invalid response" in event["error"]
