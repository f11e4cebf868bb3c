"""The start fence (issue 19, break 1): a start that must not repeat is marked as sent only while the attempt's
claim still holds the job's start, so an attempt paused between its claim and its call (SIGSTOP, a VM freeze, a
long GC), whose step another attempt took over, makes no call.

The paused attempt is played in-process: its claim is taken, its lease made to lapse, another attempt takes over,
and then the paused attempt's own start step runs with the claim it got before the pause, as its thread would on
waking up."""

from __future__ import annotations

import dramatiq
import pytest

from actors.step import make_step
from simulator import SimulatorHandle
from worker.client import Client
from worker.runtime.app import Runtime
from worker.store.records import Claim, ClaimVerdict, JobRecord, Phase

GENERATE = {"num_scenarios": 2}


def _expire_lease(rt: Runtime, job_id: str) -> None:
    rt.redis.hset(rt.store.job_key(job_id), "lease", 0)


def _resume(rt: Runtime, job_id: str, claim: Claim) -> None:
    """The paused attempt wakes up and carries on with its start step, holding the claim it had."""
    from actors.jobs import _start

    _start(make_step(rt, job_id, Phase.START, claim))


def _starts(sim: SimulatorHandle) -> int:
    return int(sim.stats()["started_by_kind"].get("scenario_generate", 0))


def test_a_start_paused_past_its_lease_makes_no_call_once_another_attempt_started_the_job(
    client: Client, rt: Runtime, sim: SimulatorHandle
) -> None:
    """On main before the fence, `mark_start_sent` was a plain HSET: A's call went out too (2 starts)."""
    job_id = client.submit("scenario.generate", GENERATE)  # its start message waits for a worker
    paused = rt.store.claim(job_id, Phase.START, 0)  # A's claim comes back; then A is frozen
    assert paused.verdict == "ok"
    _expire_lease(rt, job_id)  # A's lease (4 s in production) runs out while it is frozen
    b = dramatiq.Worker(rt.broker, worker_threads=2, worker_timeout=100)  # B takes the step over
    b.start()
    try:
        event = client.wait(job_id, timeout=30)
        assert event["status"] == "completed"
        assert _starts(sim) == 1
        _resume(rt, job_id, paused)
    finally:
        b.stop(timeout=10_000)
    assert _starts(sim) == 1, "the paused attempt called Cekura after another attempt had started the job"
    assert client.status(job_id)["status"] == "completed"


def test_a_start_paused_past_its_lease_makes_no_call_while_another_attempt_holds_the_start(
    client: Client, rt: Runtime, sim: SimulatorHandle
) -> None:
    """B has claimed the start and not yet called: A's mark must lose to B's claim, and B's must win."""
    job_id = client.submit("scenario.generate", GENERATE)
    paused = rt.store.claim(job_id, Phase.START, 0)
    _expire_lease(rt, job_id)
    taken = rt.store.claim(job_id, Phase.START, 0)  # B takes the step over
    assert taken.verdict == "ok"
    _resume(rt, job_id, paused)
    assert _starts(sim) == 0
    record = rt.store.get(job_id) or {}
    assert record["state"] == "starting" and record.get("start_sent", "") == ""
    assert rt.store.mark_start_sent(job_id, taken) == "ok"  # B's own mark goes through


def test_a_mark_after_the_claims_lease_ran_out_is_lost_even_with_no_other_attempt(client: Client, rt: Runtime) -> None:
    job_id = client.submit("scenario.generate", GENERATE)
    claim = rt.store.claim(job_id, Phase.START, 0)
    _expire_lease(rt, job_id)
    assert rt.store.mark_start_sent(job_id, claim) == "lost"
    assert (rt.store.get(job_id) or {}).get("start_sent", "") == ""


def test_a_mark_replayed_after_a_lost_reply_is_its_own_and_a_second_attempt_finds_it(
    client: Client, rt: Runtime
) -> None:
    """redis-py re-sends a script whose reply was lost: the replay of this attempt's own mark is `ok`, not a
    start some other attempt sent."""
    job_id = client.submit("scenario.generate", GENERATE)
    claim = rt.store.claim(job_id, Phase.START, 0)
    assert rt.store.mark_start_sent(job_id, claim) == "ok"
    assert rt.store.mark_start_sent(job_id, claim) == "ok"
    _expire_lease(rt, job_id)
    successor = rt.store.claim(job_id, Phase.START, 0)
    assert successor.job is not None and successor.job.start_sent  # it fails the job "outcome unknown"
    assert rt.store.mark_start_sent(job_id, successor) == "sent"


@pytest.mark.parametrize("state", ["queued", "polling", "finished"])
def test_a_mark_on_a_job_that_is_not_starting_is_lost(client: Client, rt: Runtime, state: str) -> None:
    job_id = client.submit("scenario.generate", GENERATE)
    claim = rt.store.claim(job_id, Phase.START, 0)
    rt.redis.hset(rt.store.job_key(job_id), "state", state)
    assert rt.store.mark_start_sent(job_id, claim) == "lost"


def test_a_mark_for_a_key_that_is_not_a_job_is_refused(rt: Runtime) -> None:
    rt.redis.set(rt.store.job_key("stray"), "another program's value")
    record = JobRecord(seq=0, kind="scenario.generate", params="{}", start_claim="1:1")
    fake = Claim(ClaimVerdict.OK, now_ms=1, job=record)
    assert rt.store.mark_start_sent("stray", fake) == "corrupt"
    assert rt.store.mark_start_sent("absent", fake) == "gone"
