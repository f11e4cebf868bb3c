"""Learned polling end to end: a real `cekura-worker run` learns how long a kind's jobs take from the jobs it runs,
and polls later jobs of that kind less often, within the job's deadline; Cekura is the simulator over HTTP."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import pytest

pytestmark = pytest.mark.slow

#: Every auto-fetch job runs this long at the simulator (log-normal with no spread: a fixed duration).
DURATION_S = 2.0
#: Jobs per batch; the first batch is the history the second one is polled from.
BATCH = 12

#: The declared schedule 0.1 s x1.5 to 2 s polls a 2 s job about 6 times; learning may stretch to 2 s intervals.
LEARNING_ENV = {
    "CEKURA_LEARN_POLLING": "true",  # FAST_ENV turns it off for the other system tests
    "CEKURA_POLL_INITIAL_S": "0.1",
    "CEKURA_POLL_FACTOR": "1.5",
    "CEKURA_POLL_MAX_S": "2.0",
    "CEKURA_POLL_MIN_S": "0.05",
    "CEKURA_LEARN_WARMUP_JOBS": str(BATCH),
    "CEKURA_LEARN_WINDOW_JOBS": "200",
    "CEKURA_LEARN_REFRESH_S": "0.2",
}


def _run_batch(system: Any, server: Any, client: Any, prefix: str, worker: Any) -> dict[str, dict[str, str]]:
    ids = {f"{prefix}-{i:02d}" for i in range(BATCH)}
    for job_id in sorted(ids):
        client.submit("agent.auto_fetch", {"agent_id": 5}, job_id=job_id, deadline_s=60)
    with server.client() as raw:
        return system.wait_all_finished(raw, ids, timeout=60, worker=worker)


def test_a_worker_learns_how_long_a_kind_takes_and_polls_it_less(system: Any) -> None:
    server = system.redis()
    sim = system.simulator("--durations", json.dumps({"auto_fetch": [DURATION_S, 0]}))
    worker = system.worker(system.worker_env(server, sim, **LEARNING_ENV), processes=1, threads=4)
    client = system.client(server)

    first = _run_batch(system, server, client, "first", worker)
    time.sleep(0.5)  # past CEKURA_LEARN_REFRESH_S: the worker reads the history again before its next poll
    later = _run_batch(system, server, client, "later", worker)

    assert {event["status"] for event in [*first.values(), *later.values()]} == {"completed"}
    polls_first = statistics.mean(int(event["polls"]) for event in first.values())
    polls_later = statistics.mean(int(event["polls"]) for event in later.values())
    assert polls_first >= 5, polls_first  # the declared schedule: 0.1, 0.25, 0.48, 0.81, 1.32, 2.08 s
    assert polls_later <= 0.6 * polls_first, (polls_first, polls_later)
    # It learned the duration rather than merely polling late: each job's result came soon after Cekura finished.
    sim_polls = sim.polls()
    for event in later.values():
        record = sim_polls[event["progress_id"]]
        assert record["terminal_at"] - record["finishes_at"] < 1.5, record

    # The history is in Redis for the fleet, and `status` shows it.
    status = system.cli(worker.env, "status", "--format", "json")
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)["polling"]["by_kind"]["agent.auto_fetch"]
    assert view["jobs"] == 2 * BATCH and view["schedule"]["in_use"] == "learned"
    assert view["durations_s"]["p50"] == pytest.approx(DURATION_S, rel=0.35)

    # Whatever was learned, a job ends at its deadline: this one never finishes, and its deadline comes before the
    # first poll the learned schedule would make.
    client.submit("agent.auto_fetch", {"agent_id": 777}, job_id="hangs", deadline_s=1.0)
    with server.client() as raw:
        event = system.wait_all_finished(raw, {"hangs"}, timeout=30, worker=worker)["hangs"]
    assert event["status"] == "timed_out"
    took = _iso_s(event["finished_at"]) - _iso_s(event["submitted_at"])
    assert 1.0 <= took < 2.0, took


def _iso_s(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
