"""The sorted-set delay broker: delayed messages wait in Redis (not in a worker), run on time, and the actors and
the reconciler on top of it make duplicate and lost messages harmless."""

from __future__ import annotations

import json
import time
from typing import Any

import dramatiq
import pytest
from dramatiq.errors import ActorNotFound

from actors import names
from config.settings import Settings, load_settings
from simulator import SimulatorHandle
from tests.support import wait_for
from worker.client import Client
from worker.runtime.app import Runtime, runtime
from worker.runtime.connection import server_ms
from worker.runtime.reconciler import reconcile_once

#: Where the test actor records that it ran.
RAN_KEY = "test:broker:ran"


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The shared test settings, with a test's `indirect` overrides (validated like any other settings)."""
    overrides = getattr(request, "param", {})
    return load_settings(**{**settings.model_dump(), **overrides}) if overrides else settings


def _record(token: str) -> None:
    runtime().redis.rpush(RAN_KEY, json.dumps({"token": token, "at": time.time()}))


@pytest.fixture
def recorder(rt: Runtime) -> dramatiq.Actor[[str], None]:
    """A tiny actor on the service's queue that records when it ran (declared once: the session shares a broker)."""
    try:
        return rt.broker.get_actor("test_broker.record")  # type: ignore[no-any-return]
    except ActorNotFound:
        pass
    return dramatiq.actor(
        _record,
        actor_name="test_broker.record",
        queue_name=rt.settings.cekura_queue,
        broker=rt.broker,
        max_retries=0,
        time_limit=10_000,
    )


def _keys(rt: Runtime) -> tuple[str, str, str]:
    """The queue list, its delayed sorted set and its message hash."""
    queue = f"{rt.broker.namespace}:{rt.settings.cekura_queue}"
    return queue, f"{queue}.ZQ", f"{queue}.msgs"


def _fetched_by_a_worker(rt: Runtime, redis_message_id: str) -> bool:
    return any(rt.redis.sismember(key, redis_message_id) for key in rt.redis.keys(f"{rt.broker.namespace}:__acks__.*"))


def _drained(rt: Runtime) -> bool:
    """No message is queued or being processed (delayed messages may still wait), read in one transaction."""
    queue, _, _ = _keys(rt)
    acks = list(rt.redis.scan_iter(f"{rt.broker.namespace}:__acks__.*"))
    with rt.redis.pipeline(transaction=True) as pipe:
        pipe.llen(queue)
        for key in acks:
            pipe.scard(key)
        return not any(pipe.execute())


def _ran(rt: Runtime) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in rt.redis.lrange(RAN_KEY, 0, -1)]


# -- delayed messages ---------------------------------------------------------------------------------------------


def test_a_delayed_message_waits_in_the_sorted_set_and_runs_after_its_delay_not_before(
    rt: Runtime, worker: dramatiq.Worker, recorder: dramatiq.Actor[[str], None]
) -> None:
    queue, delayed, messages = _keys(rt)
    sent_ms = server_ms(rt.redis)
    message = recorder.send_with_options(args=("late",), delay=2000)
    redis_id = message.options["redis_message_id"]
    eta_ms = rt.redis.zscore(delayed, redis_id)
    assert sent_ms + 2000 <= eta_ms <= server_ms(rt.redis) + 2000  # due 2 s after it was stored, on the server's clock
    assert json.loads(rt.redis.hget(messages, redis_id))["args"] == ["late"]
    assert rt.redis.llen(queue) == 0

    # Until its eta (by the server's clock, read with the rest in one transaction: a slow test can't mistake a
    # message that ran on time for an early one) it is still waiting in Redis, not run and not held by any worker.
    def before_eta() -> bool:
        acks = list(rt.redis.scan_iter(f"{rt.broker.namespace}:__acks__.*"))
        with rt.redis.pipeline(transaction=True) as pipe:
            pipe.time()
            pipe.lrange(RAN_KEY, 0, -1)
            pipe.zscore(delayed, redis_id)
            for key in acks:
                pipe.sismember(key, redis_id)
            (seconds, micros), ran, score, *held = pipe.execute()
        if int(seconds) * 1000 + int(micros) // 1000 >= eta_ms:
            return False
        assert ran == []  # not before its eta
        assert score == eta_ms  # still waiting in Redis...
        assert not any(held)  # ...and not held by any worker
        return True

    looks = 0
    while before_eta():
        looks += 1
        time.sleep(0.05)
    assert looks, "the message was due before the test could look at it"

    (ran,) = wait_for(lambda: _ran(rt), what="the delayed message to run")
    assert ran["token"] == "late"
    assert ran["at"] >= eta_ms / 1000 - 0.01
    assert rt.redis.zcard(delayed) == 0
    wait_for(lambda: not rt.redis.hexists(messages, redis_id), what="the message to be acked")
    assert len(_ran(rt)) == 1


def test_a_far_future_delayed_message_does_not_hold_up_a_due_one(
    rt: Runtime, worker: dramatiq.Worker, recorder: dramatiq.Actor[[str], None]
) -> None:
    _, delayed, _ = _keys(rt)
    far = recorder.send_with_options(args=("far",), delay=600_000)
    recorder.send_with_options(args=("soon",), delay=50)
    recorder.send("now")
    wait_for(lambda: len(_ran(rt)) == 2, what="the due messages")
    assert sorted(r["token"] for r in _ran(rt)) == ["now", "soon"]
    assert rt.redis.zrange(delayed, 0, -1) == [far.options["redis_message_id"].encode()]
    assert not _fetched_by_a_worker(rt, far.options["redis_message_id"])


# -- duplicate and lost poll messages -----------------------------------------------------------------------------


def _started_without_a_worker(rt: Runtime, client: Client, job_id: str, agent_id: int) -> str:
    """Submit a job and run its start step right here (no worker yet); returns its progress id."""
    from actors.jobs import start

    client.submit("agent.auto_fetch", {"agent_id": agent_id}, job_id=job_id)
    start(job_id)  # the actor's function, called directly
    job = rt.store.get(job_id)
    assert job is not None
    assert job["state"] == "polling"
    return job["progress_id"]


#: Polls 5 s apart, so nothing but the test's own messages polls during the test.
SLOW = {"cekura_poll_initial_s": 5.0, "cekura_poll_max_s": 5.0}


@pytest.mark.parametrize("settings", [SLOW], indirect=True)
def test_the_same_poll_delivered_twice_makes_one_cekura_call(
    rt: Runtime, client: Client, sim: SimulatorHandle, request: pytest.FixtureRequest
) -> None:
    from actors.jobs import poll

    _, delayed, _ = _keys(rt)
    progress_id = _started_without_a_worker(rt, client, "dup-poll", 777)  # never finishes
    assert rt.redis.zcard(delayed) == 1
    rt.redis.delete(delayed)  # take the scheduled poll (seq 1) away and deliver it twice instead
    poll.send("dup-poll", 1)
    poll.send("dup-poll", 1)
    request.getfixturevalue("worker")

    wait_for(lambda: rt.store.get("dup-poll")["polls"] == "1" and _drained(rt), what="both copies handled")  # type: ignore[index]
    assert len(sim.polls()[progress_id]["times"]) == 1
    assert rt.store.get("dup-poll")["seq"] == "2"  # type: ignore[index]
    assert rt.redis.zcard(delayed) == 1  # and the next poll was scheduled once, not twice

    poll.send("dup-poll", 1)  # a late third copy of a poll that already ran
    wait_for(lambda: _drained(rt), what="the late copy handled")
    assert len(sim.polls()[progress_id]["times"]) == 1
    assert rt.redis.zcard(delayed) == 1
    assert client.cancel("dup-poll").result == "cancelled"


# -- claims made by the fetch ---------------------------------------------------------------------------------------


def _fetch(rt: Runtime) -> list[tuple[dict[str, Any], Any]]:
    """One fetch as the consumer makes it: [(message, the store's reading of the claim made for it or None)]."""
    _, fetched = rt.broker.fetch(rt.settings.cekura_queue, 10, [])
    messages = [(json.loads(data), rt.store.parse_claim(claim) if claim else None) for data, claim in fetched]
    return [(message, claim) for message, claim in messages if message["actor_name"] == names.POLL]


@pytest.mark.parametrize("settings", [SLOW], indirect=True)
def test_the_fetch_claims_a_poll_messages_job_and_only_that_message_may_take_it_again(
    rt: Runtime, client: Client
) -> None:
    from actors.jobs import poll
    from worker.store.jobs import Phase

    _, delayed, _ = _keys(rt)
    _started_without_a_worker(rt, client, "fetch-claim", 778)
    rt.redis.delete(delayed)
    poll.send("fetch-claim", 1)
    poll.send("fetch-claim", 1)  # a duplicate copy, fetched in the same batch

    (first, claim), (copy, copy_claim) = _fetch(rt)
    assert claim is not None and claim.verdict == "ok"
    assert claim.job is not None and claim.job.progress_id and claim.job.kind == "agent.auto_fetch"
    assert copy_claim is not None and copy_claim.verdict == "stale"
    job = rt.store.get("fetch-claim")
    assert job is not None and int(job["lease"]) > claim.now_ms
    assert job["lease_owner"] == first["options"]["redis_message_id"]
    # The actor's own claim (a message fetched without one) finds the lease taken too.
    assert rt.store.claim("fetch-claim", Phase.POLL, 1).verdict == "stale"

    # A graceful stop puts the fetched but unstarted message back: fetched again, it takes its job back...
    rt.broker.do_requeue(rt.settings.cekura_queue, first["options"]["redis_message_id"])
    rt.broker.do_requeue(rt.settings.cekura_queue, copy["options"]["redis_message_id"])
    claims = {m["options"]["redis_message_id"]: c for m, c in _fetch(rt)}
    assert claims[first["options"]["redis_message_id"]].verdict == "ok"
    assert claims[copy["options"]["redis_message_id"]].verdict == "stale"  # ...and the copy still can't
    assert client.cancel("fetch-claim").result == "cancelled"


@pytest.mark.parametrize("settings", [{**SLOW, "cekura_rate_limit_rps": 50.0}], indirect=True)
def test_with_the_rate_limit_on_the_fetch_claims_nothing_and_the_actor_claims(rt: Runtime, client: Client) -> None:
    from actors.jobs import poll

    _, delayed, _ = _keys(rt)
    _started_without_a_worker(rt, client, "actor-claim", 779)
    rt.redis.delete(delayed)
    poll.send("actor-claim", 1)

    assert rt.broker.fetch_claims is None
    ((message, claim),) = _fetch(rt)
    assert message["args"] == ["actor-claim", 1] and claim is None
    assert rt.store.get("actor-claim")["lease"] == "0"  # type: ignore[index]
    assert client.cancel("actor-claim").result == "cancelled"


#: A first poll 0.5 s after the start, overdue 2 s after that; a reconciler pass pushes an overdue job's due time 2 s
#: ahead. (Seconds, not fractions of one: the test's "not yet" and "not again" passes must come before those times.)
LOSSY = {"cekura_poll_initial_s": 0.5, "cekura_poll_max_s": 0.5, "cekura_reconcile_grace_s": 2.0}


@pytest.mark.parametrize("settings", [LOSSY], indirect=True)
def test_the_reconciler_resends_a_lost_poll_and_the_job_completes_once(
    rt: Runtime, client: Client, sim: SimulatorHandle, request: pytest.FixtureRequest
) -> None:
    _, delayed, _ = _keys(rt)
    progress_id = _started_without_a_worker(rt, client, "lost-poll", 5)
    assert rt.redis.zcard(delayed) == 1
    rt.redis.delete(delayed)  # the poll message is lost
    request.getfixturevalue("worker")

    assert reconcile_once(rt) == 0  # not overdue yet: nothing re-sent
    overdue_at_ms = rt.redis.zscore(rt.store.schedule_key, "lost-poll")
    assert overdue_at_ms is not None
    seconds, micros = rt.redis.time()
    time.sleep(max(0.0, overdue_at_ms / 1000 - (seconds + micros / 1e6)) + 0.05)
    assert sim.polls()[progress_id]["times"] == []  # the lost message really never ran
    assert client.status("lost-poll")["state"] == "polling"  # type: ignore[index]

    assert reconcile_once(rt) == 1
    assert reconcile_once(rt) == 0  # handed out once: a second pass right after re-sends nothing
    event = client.wait("lost-poll", timeout=10)
    assert event["status"] == "completed"
    assert len([e for e in client.results() if e["job_id"] == "lost-poll"]) == 1
    assert sim.stats()["by_route"].get("auto-fetch 202") == 1
    assert len(sim.polls()[progress_id]["times"]) == 1
    assert reconcile_once(rt) == 0
    assert rt.redis.zscore(rt.store.schedule_key, "lost-poll") is None  # finished jobs leave the schedule


@pytest.mark.parametrize("settings", [LOSSY], indirect=True)
def test_the_reconciler_resends_a_lost_start_message(
    rt: Runtime, client: Client, sim: SimulatorHandle, request: pytest.FixtureRequest
) -> None:
    queue, _, _ = _keys(rt)
    client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="lost-start")
    assert rt.redis.llen(queue) == 1
    rt.redis.delete(queue)  # the start message is lost before any worker took it
    request.getfixturevalue("worker")

    assert reconcile_once(rt) == 0
    overdue_at_ms = rt.redis.zscore(rt.store.schedule_key, "lost-start")
    assert overdue_at_ms is not None
    seconds, micros = rt.redis.time()
    time.sleep(max(0.0, overdue_at_ms / 1000 - (seconds + micros / 1e6)) + 0.05)
    assert client.status("lost-start")["state"] == "queued"  # type: ignore[index]
    assert sim.stats()["started_jobs"] == 0

    assert reconcile_once(rt) == 1
    assert client.wait("lost-start", timeout=10)["status"] == "completed"
    assert sim.stats()["started_jobs"] == 1
    assert len([e for e in client.results() if e["job_id"] == "lost-start"]) == 1


# -- acks, ack sets and heartbeats --------------------------------------------------------------------------------


def test_a_fetch_whose_reply_was_lost_leaves_messages_that_the_sweep_requeues(
    rt: Runtime, recorder: dramatiq.Actor[[str], None]
) -> None:
    # The fetch script ran (the message is in this worker's ack set) but its reply never reached the consumer, as
    # when the connection drops mid-reply. Dramatiq's maintenance only looks at dead workers' ack sets.
    recorder.send("lost-reply")
    queue, _, _ = _keys(rt)
    rt.broker.fetch(rt.settings.cekura_queue, 10, [])  # the reply is dropped on the floor
    acks = f"{rt.broker.namespace}:__acks__.{rt.broker.broker_id}.{rt.settings.cekura_queue}"
    (stuck,) = rt.redis.smembers(acks)
    assert rt.redis.llen(queue) == 0
    assert rt.broker.sweep_acks() == []  # first sighting: it may be a fetch still on its way
    assert rt.broker.sweep_acks() == [stuck.decode()]
    assert rt.redis.smembers(acks) == set()
    assert rt.redis.lrange(queue, 0, -1) == [stuck]


def test_the_sweep_leaves_messages_a_consumer_holds_alone(
    rt: Runtime, worker: dramatiq.Worker, recorder: dramatiq.Actor[[str], None]
) -> None:
    held = rt.broker.held.setdefault(rt.settings.cekura_queue, set())
    acks = f"{rt.broker.namespace}:__acks__.{rt.broker.broker_id}.{rt.settings.cekura_queue}"
    rt.redis.sadd(acks, "in-hand")
    held.add("in-hand")
    try:
        assert rt.broker.sweep_acks() == []
        assert rt.broker.sweep_acks() == []
        assert rt.redis.sismember(acks, "in-hand")
    finally:
        held.discard("in-hand")
        rt.redis.srem(acks, "in-hand")


def test_acks_survive_a_fetch_that_fails_with_a_script_error(rt: Runtime) -> None:
    consumer = rt.broker.consume(rt.settings.cekura_queue, prefetch=4, timeout=50)
    consumer._acks.append("some-message")  # buffered, to ride on the next fetch
    bad = "redis.call('NOSUCHCOMMAND')"
    original = rt.broker._fetch_script
    rt.broker._fetch_script = type(original)(rt.redis, bad)  # type: ignore[method-assign]
    try:
        with pytest.raises(Exception):  # noqa: B017 - redis.ResponseError, whatever its subclass
            next(consumer)
        assert consumer._acks == ["some-message"]  # kept for the next fetch, not dropped
    finally:
        rt.broker._fetch_script = original  # type: ignore[method-assign]
        consumer._acks.clear()


def test_the_worker_heartbeat_set_forgets_processes_gone_for_an_hour(rt: Runtime) -> None:
    from worker.runtime.heartbeat import Heartbeat, server_ms, workers_key

    key = workers_key(rt.settings)
    now = server_ms(rt.redis)
    rt.redis.zadd(key, {"gone-host:1": now - 2 * 3600 * 1000, "recent-host:2": now - 60 * 1000})
    Heartbeat(rt.redis, rt.settings, lambda: True).beat()
    members = {m.decode() for m in rt.redis.zrange(key, 0, -1)}
    assert "gone-host:1" not in members
    assert "recent-host:2" in members
    assert len(members) == 2
