"""One clock: workers whose host clocks are a minute off, either way, or far apart from each other, poll on
time, are never taken for dead by each other, and publish one event per job.

Each worker runs with `tests/system/clockshift` on its PYTHONPATH, which shifts its processes' wall clock (see
that folder's `sitecustomize.py`). Before due times, heartbeats and maintenance were taken from the Redis
server's clock, a worker 60 s behind polled one job hundreds of times, one 60 s ahead noticed every finished job
only through the reconciler, and of two workers 30 s apart one declared the other dead and ran its in-flight
messages again.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from tests.system.conftest import System

CLOCKSHIFT = str(Path(__file__).parent / "clockshift")

#: Simulated jobs run this long; with the system tests' fast schedule (0.1 s, x1.5, at most 0.5 s) that is
#: about 9 polls, so 20 leaves room for jitter while a collapsed schedule (a poll per idle wake or faster)
#: makes far more.
DURATION_S = 3.0
MAX_POLLS = 20


def _shifted(system: System, server: object, sim: object, shift_s: float) -> dict[str, str]:
    env = system.worker_env(server, sim)  # type: ignore[arg-type]
    return {**env, "PYTHONPATH": CLOCKSHIFT, "TEST_CLOCK_SHIFT_S": str(shift_s)}


@pytest.mark.parametrize("shift_s", [-60.0, 60.0])
def test_a_worker_whose_clock_is_a_minute_off_polls_on_schedule(system: System, shift_s: float) -> None:
    server = system.redis()
    sim = system.simulator("--duration", str(DURATION_S))
    worker = system.worker(_shifted(system, server, sim, shift_s), processes=1, threads=4)
    client = system.client(server)
    jobs = {client.submit("agent.auto_fetch", {"agent_id": 5}, job_id=f"skew-{i}", deadline_s=60) for i in range(5)}
    with server.client() as raw:
        finished = system.wait_all_finished(raw, jobs, timeout=40, worker=worker)
        system.assert_exactly_one_event_each(raw, jobs)
    polls = sim.polls()
    for event in finished.values():
        assert event["status"] == "completed"
        record = polls[event["progress_id"]]
        assert len(record["times"]) <= MAX_POLLS, f"{len(record['times'])} polls for a {DURATION_S:g} s job"
        # Noticed within one poll interval (0.5 s) of finishing, plus slack: not by the reconciler (2 s grace).
        finished_at = time.mktime(time.strptime(event["finished_at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        finished_at += int(event["finished_at"][20:23]) / 1000
        late = finished_at - record["terminal_at"]
        assert late < 1.5, f"result published {late:.2f} s after Cekura finished"
    assert worker.count("job_rescheduled") == 0, "the reconciler had to step in"


def test_two_workers_thirty_seconds_apart_never_take_each_other_for_dead(system: System) -> None:
    server = system.redis()
    sim = system.simulator("--duration", "8")
    behind = system.worker(_shifted(system, server, sim, -15.0), processes=1, threads=4)
    ahead = system.worker(_shifted(system, server, sim, 15.0), processes=1, threads=4)
    client = system.client(server)
    jobs = {client.submit("agent.auto_fetch", {"agent_id": 5}, job_id=f"apart-{i}", deadline_s=60) for i in range(20)}
    with server.client() as raw:
        finished = system.wait_all_finished(raw, jobs, timeout=60, worker=ahead)
        system.assert_exactly_one_event_each(raw, jobs)
        seconds, _ = raw.time()
        beats = raw.zrange("cekura:dramatiq:__heartbeats__", 0, -1, withscores=True)
    # Both workers' heartbeats are on the server's clock, not 15 s either side of it.
    assert len(beats) >= 2
    assert all(abs(score / 1000 - int(seconds)) < 5 for _, score in beats), beats
    # No message ran twice at once: two polls of one job never come closer than the schedule allows.
    polls = sim.polls()
    for event in finished.values():
        assert event["status"] == "completed"
        times = sorted(polls[event["progress_id"]]["times"])
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert not gaps or min(gaps) > 0.05, f"two polls {min(gaps) * 1000:.0f} ms apart for {event['job_id']}"
        assert len(times) <= 30
    for run in (behind, ahead):
        assert run.count("job_rescheduled") == 0
