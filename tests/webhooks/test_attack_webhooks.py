"""Attacks on the evaluator-run webhooks and the lost-start lookup (issue 21), as a hostile tester would, kept as
regression tests once each break was fixed.

Each test states the guarantee it attacks; a failing test demonstrates a break. A docstring "HELD since <fix>: was
BREAK: ..." names the fix and what the attack did before it. Reproductions run a real worker, real Redis and the
simulator over HTTP, and the real `cekura-worker webhooks` process where the receiver matters
(`tests/webhooks/receivers.py`). Tests wait for states, never for time to pass, except where a rate is measured over
a window."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import pytest

from config.settings import Settings
from simulator import SimulatorHandle
from tests.conftest import SIM_KEY, make_settings
from tests.support import RedisServer, wait_for
from tests.webhooks.receivers import SECRET, SLOW, ReceiverProcess, ended_at_cekura, polls_made, routes, started_run
from worker.cekura import lookup
from worker.client import Client
from worker.runtime.app import Runtime, bind_actors, setup
from worker.store.records import Phase


def _worker(rt: Runtime, threads: int = 4) -> dramatiq.Worker:
    w = dramatiq.Worker(rt.broker, worker_threads=threads, worker_timeout=100)
    w.start()
    return w


def _lose_start_by_a_dead_worker(rt: Runtime, job_id: str) -> None:
    """A worker claimed the job's start, marked it sent, and died before the answer (nothing reached Cekura): the
    next attempt finds the mark and looks the run up by its tag instead of starting it."""
    claim = rt.store.claim(job_id, Phase.START, 0)
    assert claim.verdict == "ok"
    assert rt.store.mark_start_sent(job_id, claim) == "ok"
    rt.redis.hset(rt.store.job_key(job_id), "lease", 0)


# =====================================================================================================================
# 1. Webhook floods and races: "a forged, stale, duplicated or late webhook costs at most one GET"
# =====================================================================================================================


def test_a_flood_of_concurrent_duplicate_webhooks_for_one_running_job_costs_at_most_one_get_each(
    running: tuple[Runtime, Client], receiver: ReceiverProcess, sim: SimulatorHandle
) -> None:
    """HELD (as stated: per webhook). 300 copies of one webhook at once for a run that never ends. The copies that
    arrive before the hastened poll claims the job write poll messages for the same step (one GET, the rest find
    the step taken); each copy arriving after a poll let go makes one more, and copies answered `busy` share one
    retry per result id. Measured: ~10 GETs for 300 copies sent over ~1 s, and each of those polls leaves a stale
    safety-net message in the delay queue until it is due."""
    _rt, client = running
    job_id, result_id = started_run(client, name="forever [hang]")
    answers = [answer.status_code for answer in receiver.flood(int(result_id), 300)]
    assert set(answers) == {200}
    wait_for(lambda: int(client.status(job_id).get("polls") or 0) >= 1, 15, "a hastened poll to be recorded")
    assert client.status(job_id)["state"] == "polling"
    gets = polls_made(sim)  # an upper bound at any moment: each webhook hastens at most one poll
    print(f"300 concurrent duplicate webhooks cost {gets} GETs")
    assert 1 <= gets <= 300


# =====================================================================================================================
# 2. The lookup: "never adopts a wrong result (another job's, a stale one, one of two)"
# =====================================================================================================================


def test_a_lookup_never_adopts_another_jobs_run_whose_name_carries_its_tag(
    rt: Runtime, client: Client, sim: SimulatorHandle
) -> None:
    """HELD since the tag carries an HMAC check and must END the run's name (`lookup.choose`): was BREAK:
    `lookup.choose` took any result whose name *contained* `[cw:<job id>]` (`mark in r["name"]`), while a run's
    name is partly the submitter's: a job `other` named "copied from the dashboard [cw:victim]" (a name pasted from
    Cekura's dashboard, or a hostile one) was sent as "copied from the dashboard [cw:victim] [cw:other]". Job
    `victim`'s start is lost before reaching Cekura (its worker died after marking it sent): its lookup found
    exactly one result carrying `[cw:victim]`, created after it was submitted: `other`'s, and adopted it. Two jobs
    then polled one run, `victim` reported `other`'s verdict, and the result index pointed `other`'s webhooks at
    `victim`. Now nothing is adopted: `victim` fails "outcome unknown"."""
    victim = client.submit("evaluator.run", {"scenarios": [1], "name": "mine"}, job_id="victim")
    _lose_start_by_a_dead_worker(rt, victim)
    other = client.submit(
        "evaluator.run", {"scenarios": [1], "name": "copied from the dashboard [cw:victim]"}, job_id="other"
    )
    w = _worker(rt)
    try:
        other_event = client.wait(other, timeout=20)
        victim_event = client.wait(victim, timeout=20)
    finally:
        w.stop(timeout=10_000)
    assert other_event["status"] == "completed"
    assert sim.stats()["started_by_kind"]["evaluator_run"] == 1  # only `other` ever reached Cekura
    assert victim_event["progress_id"] != other_event["progress_id"], (
        f"job victim adopted job other's run {other_event['progress_id']} and ended {victim_event['status']!r} on it"
    )
    assert victim_event["status"] == "failed" and "outcome is unknown" in victim_event["error"]


def test_a_run_left_by_an_earlier_job_with_the_same_id_does_not_block_finding_the_new_one(
    rt: Runtime, client: Client, sim: SimulatorHandle
) -> None:
    """HELD since the tag carries a per-submission check (`lookup.tag(job_id, submitted_ms, key)`): was BREAK: the
    earlier run carried the same `[cw:nightly-7]` and was counted with the new one ("2 results carry the tag ...
    none adopted"), so the new job failed "outcome unknown" although its run was at Cekura. Now a job id used again
    after its record expired, whose start answer is lost, finds and adopts its own run."""
    w = _worker(rt)
    try:
        first = client.submit("evaluator.run", {"scenarios": [1], "name": "nightly"}, job_id="nightly-7")
        assert client.wait(first, timeout=20)["status"] == "completed"
        rt.redis.delete(rt.store.job_key(first))  # its record expired (CEKURA_JOB_TTL_S)
        sim.set_faults(lost_start_rate=1.0, hang_s=1.0)
        again = client.submit("evaluator.run", {"scenarios": [1], "name": "nightly"}, job_id="nightly-7")
        wait_for(lambda: sim.stats()["started_by_kind"]["evaluator_run"] == 2, 15, "the second start at Cekura")
        sim.clear_faults()
        event = client.wait(again, timeout=20)
    finally:
        w.stop(timeout=10_000)
    assert event["status"] == "completed", f"{event['status']}: {event['error']}"


def test_a_run_of_another_deployment_with_the_same_job_id_is_not_adopted(
    rt: Runtime, client: Client, sim: SimulatorHandle
) -> None:
    """HELD since the tag carries a per-submission HMAC check (`lookup.tag(job_id, submitted_ms, key)`): was BREAK:
    the tag named only the job id, which is unique within one deployment's Redis (its key prefix), not in the Cekura
    project: a staging and a production worker (or two teams) sharing a project, each running a CI job `ci-1234`,
    tagged their runs identically, and this deployment's `ci-1234`, whose start was lost before it reached Cekura,
    adopted the other deployment's run and reported its verdict as its own. Here the other deployment's run is
    started at Cekura as its worker would (`run_scenarios` with the name "staging nightly [cw:ci-1234~<check>]",
    its check made with the same API key, for its own submission a second earlier); the old-style tag
    "[cw:ci-1234]" is tried as well. Neither is adopted: the job fails "outcome unknown"."""
    job_id = client.submit("evaluator.run", {"scenarios": [1], "name": "prod nightly"}, job_id="ci-1234")
    submitted_ms = int((rt.store.get(job_id) or {})["submitted_ms"])
    _lose_start_by_a_dead_worker(rt, job_id)
    theirs_tag = lookup.tag("ci-1234", submitted_ms - 1000, SIM_KEY)  # same key, another submission
    assert theirs_tag != lookup.tag("ci-1234", submitted_ms, SIM_KEY)
    their_ids: list[str] = []
    with httpx.Client(base_url=sim.url, headers={"X-CEKURA-API-KEY": SIM_KEY}, trust_env=False) as http:
        for name in (lookup.with_tag("staging nightly", theirs_tag), "staging nightly [cw:ci-1234]"):
            theirs = http.post("/test_framework/v1/scenarios/run_scenarios/", json={"scenarios": [2], "name": name})
            assert theirs.status_code in (200, 201), theirs.text
            their_ids.append(str(theirs.json()["id"]))
    w = _worker(rt)
    try:
        event = client.wait(job_id, timeout=20)
    finally:
        w.stop(timeout=10_000)
    assert event["progress_id"] not in their_ids, f"adopted the other deployment's run {event['progress_id']}"
    assert event["status"] == "failed" and "outcome is unknown" in event["error"], event["error"]


@pytest.mark.parametrize("wakes", ["after-the-lookup-adopted", "while-the-job-looks"])
def test_a_late_start_answer_does_not_cancel_the_run_the_lookup_finds(
    rt: Runtime, client: Client, sim: SimulatorHandle, monkeypatch: pytest.MonkeyPatch, wakes: str
) -> None:
    """Worker A claims an evaluator start, marks it sent and calls `run_scenarios`; Cekura creates run R and
    answers, but A is paused (SIGSTOP, a VM freeze, a long GC) past its lease before it records the answer. Worker
    B takes the start over, finds the mark and looks R up by its tag. A wakes up: its `advance` is `stale`, and
    `_start` hands R to `orphaned` (actors/lookup.py).

    after-the-lookup-adopted: HELD since `orphaned` skips a run the job's record already names: was BREAK:
    `end_calls` on the adopted run, the job ended `cancelled`.

    while-the-job-looks: HELD since `orphaned` also skips a late answer while its job is still looking for its run
    (state `polling`, no progress id): was BREAK: A woke while B was still looking (the record's progress_id still
    ""), so `orphaned` sent `cancel_remote` -> `end_calls` on R; a moment later B's look found R by its tag (the
    job's own run: created after the job, the one result carrying the tag) and adopted it, and the job, which
    nobody cancelled, ended `cancelled` on Cekura's word.

    In both, A's step sends no `cancel_remote` at all (read as it is sent, not from a race with the worker), and
    the job polls R to its end."""
    sim.configure(duration_s=4.0)
    from actors import jobs
    from actors.jobs import _start
    from actors.step import make_step

    job_id = client.submit("evaluator.run", {"scenarios": [1], "name": "nightly"}, job_id="paused-start")
    paused = rt.store.claim(job_id, Phase.START, 0)  # A's claim
    assert paused.verdict == "ok"
    answered, wake = threading.Event(), threading.Event()
    real_start = rt.cekura.start
    cancels: list[tuple[Any, ...]] = []
    real_cancel = jobs.cancel_remote.send

    def start_then_freeze(*args: Any, **kwargs: Any) -> Any:
        started = real_start(*args, **kwargs)  # R exists at Cekura and its answer is in A's hands
        answered.set()
        wake.wait(30)  # A is frozen
        return started

    def cancel_send(*args: Any, **kwargs: Any) -> Any:
        cancels.append(args)
        return real_cancel(*args, **kwargs)

    # B's looks wait, in the second case, until A has acted on its late answer: A surely wakes while B looks.
    may_look = threading.Event()
    if wakes == "after-the-lookup-adopted":
        may_look.set()
    real_find = rt.cekura.find

    def gated_find(*args: Any, **kwargs: Any) -> Any:
        assert may_look.wait(20)
        return real_find(*args, **kwargs)

    monkeypatch.setattr(rt.cekura, "find", gated_find)
    monkeypatch.setattr(rt.cekura, "start", start_then_freeze)
    monkeypatch.setattr(jobs.cancel_remote, "send", cancel_send)
    a = threading.Thread(target=lambda: _start(make_step(rt, job_id, Phase.START, paused)), daemon=True)
    a.start()
    assert answered.wait(10)
    rt.redis.hset(rt.store.job_key(job_id), "lease", 0)  # A's lease ran out while it was frozen
    w = _worker(rt)  # B: takes the start message, finds the mark, looks R up (first look after 1 s here)
    try:
        if wakes == "after-the-lookup-adopted":
            wait_for(lambda: client.status(job_id).get("progress_id"), 15, "the lookup to adopt the run")
        else:
            wait_for(lambda: _in_lookup(client, job_id), 15, "B to look for the run")
            assert not client.status(job_id).get("progress_id")
        wake.set()  # A wakes up holding R's answer
        a.join(10)
        assert not a.is_alive(), "A's start step never ended"
        assert cancels == [], f"A's late answer sent cancel_remote{cancels} for the job's own run"
        may_look.set()
        event = client.wait(job_id, timeout=20)
    finally:
        wake.set()
        may_look.set()
        w.stop(timeout=10_000)
    stats = sim.stats()
    assert stats["started_by_kind"]["evaluator_run"] == 1
    end_calls = routes(sim, "end_calls")
    assert (event["status"], end_calls) == ("completed", 0), (
        f"the job's own run {event['progress_id']} was ended by the late start answer: job {event['status']} "
        f"(cekura_status {event['cekura_status']!r}), end_calls sent {end_calls} time(s)"
    )


@pytest.fixture
def looking_settings(sim: SimulatorHandle, redis_client: Any) -> Settings:
    """A lookup window long enough to act while the job looks (first look after 2 s)."""
    sim.reset()
    sim.clear_faults()
    sim.configure(duration_s=3.0, polls_to_complete=None, rate_limit_rps=0)
    return make_settings(sim.url, cekura_lookup_settle_s=8.0)


@pytest.fixture
def looking(looking_settings: Settings) -> Iterator[tuple[Runtime, Client]]:
    rt = setup(looking_settings)
    bind_actors()
    w = _worker(rt)
    yield rt, Client(looking_settings, client=rt.redis, broker=rt.broker)
    w.stop(timeout=10_000)


def _in_lookup(client: Client, job_id: str) -> bool:
    view = client.status(job_id)
    return view.get("state") == "polling" and not view.get("progress_id") and "outcome is unknown" in view["error"]


def test_a_job_cancelled_while_it_looks_for_its_lost_start_still_stops_the_run_at_cekura(
    looking: tuple[Runtime, Client], sim: SimulatorHandle
) -> None:
    """HELD since `cancel_remote` looks the run up by its tag and ends it (`find_to_cancel`): was BREAK: README says
    an evaluator run's "cancel calls end_calls", but a job cancelled while it looked for its lost start ended with no
    progress id, its `cancel_remote` had nothing to end ("no progress id to cancel") and the run placed every call
    after the person cancelled it."""
    _rt, client = looking
    sim.configure(duration_s=30.0)
    sim.set_faults(lost_start_rate=1.0, hang_s=1.0)
    job_id = client.submit("evaluator.run", {"scenarios": [1, 2, 3], "name": "cancel me"})
    wait_for(lambda: _in_lookup(client, job_id), 15, "the job to look for its run")
    sim.clear_faults()
    assert client.cancel(job_id).result == "cancelled"
    assert sim.stats()["started_by_kind"]["evaluator_run"] == 1  # the run is at Cekura
    (result_id,) = sim.polls()
    # A 30 s run has ended within 15 s only if end_calls stopped it.
    wait_for(lambda: ended_at_cekura(sim, result_id), 15, f"end_calls to stop run {result_id} of the cancelled job")
    assert routes(sim, "end_calls") >= 1


def test_a_job_whose_deadline_passes_while_it_looks_still_stops_the_run_at_cekura(
    looking: tuple[Runtime, Client], sim: SimulatorHandle
) -> None:
    """HELD since `cancel_remote` looks the run up by its tag and ends it (`find_to_cancel`): was BREAK (same gap):
    a job whose deadline passed while it looked for its lost start timed out with no progress id, and the run kept
    running."""
    _rt, client = looking
    sim.configure(duration_s=30.0)
    sim.set_faults(lost_start_rate=1.0, hang_s=0.5)
    job_id = client.submit("evaluator.run", {"scenarios": [1], "name": "short deadline"}, deadline_s=2)
    wait_for(lambda: _in_lookup(client, job_id), 15, "the job to look for its run")
    sim.clear_faults()
    event = client.wait(job_id, timeout=15)
    assert event["status"] == "timed_out"
    (result_id,) = sim.polls()
    # A 30 s run has ended within 15 s only if end_calls stopped it.
    wait_for(lambda: ended_at_cekura(sim, result_id), 15, f"end_calls to stop run {result_id} of the timed-out job")
    assert routes(sim, "end_calls") >= 1


def test_one_garbled_results_list_answer_does_not_end_the_lookup_within_its_window(
    looking: tuple[Runtime, Client], sim: SimulatorHandle
) -> None:
    """HELD since a lookup error is never final within the window (actors/lookup.py `look`): was BREAK
    (availability): `look` treated any `PermanentError` from the results list as final
    (`found = lookup.Found(..., final=isinstance(exc, PermanentError))`), and an unreadable 200 (a proxy's HTML
    "Temporarily unavailable" page, a truncated body) is a PermanentError: one garbled answer failed the job
    "outcome unknown" at once, 2 s into an 8 s window, although the run was at Cekura and the next look would have
    found it (and since `fail` stops the operation remotely, its `cancel_remote` looked the run up again and ended
    it with `end_calls`). Now the job looks again, adopts its run and completes; nothing is ended at Cekura."""
    _rt, client = looking
    sim.set_faults(lost_start_rate=1.0, hang_s=0.5)
    job_id = client.submit("evaluator.run", {"scenarios": [1], "name": "garbled"})
    wait_for(lambda: _in_lookup(client, job_id), 15, "the job to look for its run")
    sim.set_faults(lost_start_rate=0.0, malformed_rate=1.0)
    wait_for(lambda: sim.stats()["faults_injected"]["malformed"] >= 1, 10, "the first look to be garbled")
    sim.clear_faults()
    event = client.wait(job_id, timeout=20)
    assert event["status"] == "completed", f"{event['status']}: {event['error']}"
    assert sim.stats()["started_by_kind"]["evaluator_run"] == 1 and routes(sim, "end_calls") == 0


def test_a_results_list_answering_5xx_once_is_looked_past(
    looking: tuple[Runtime, Client], sim: SimulatorHandle
) -> None:
    """HELD. A 500 from the results list is transient: the job looks again and adopts its run."""
    _rt, client = looking
    sim.set_faults(lost_start_rate=1.0, hang_s=0.5)
    job_id = client.submit("evaluator.run", {"scenarios": [1], "name": "five hundred"})
    wait_for(lambda: _in_lookup(client, job_id), 15, "the job to look for its run")
    sim.set_faults(lost_start_rate=0.0, error_rate=1.0)
    wait_for(lambda: sim.stats()["faults_injected"]["error"] >= 1, 10, "the first look to fail")
    sim.clear_faults()
    event = client.wait(job_id, timeout=20)
    assert event["status"] == "completed", f"{event['status']}: {event['error']}"
    assert sim.stats()["started_by_kind"]["evaluator_run"] == 1


# =====================================================================================================================
# 3. The receiver: "never calls Cekura, answers fast, 503 when Redis is down"
# =====================================================================================================================


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    (tmp_path / "redis").mkdir()
    server = RedisServer(dir=tmp_path / "redis")
    server.start()
    yield server
    if server.popen is not None:
        with contextlib.suppress(OSError):
            os.kill(server.popen.pid, signal.SIGCONT)
    server.stop()


def test_a_redis_that_does_not_answer_gets_a_fast_503_not_a_hung_webhook(
    sim: SimulatorHandle, tmp_path: Path, private_redis: RedisServer, redis_client: Any
) -> None:
    """HELD since the receiver's Redis client has 2 s socket timeouts and one retry (`Receiver`): was BREAK: the
    receiver answered 503 when Redis refused connections, but a Redis that stops answering (paused, a network
    partition dropping packets, a failover in progress) made every webhook hang: `hasten` ran with the store's
    client, whose socket timeout is 10 s and which retries timeouts 5 times with backoff
    (`worker/runtime/connection.py`), so the answer came a minute later, or the sender gave up first, and each hung
    webhook held one of the threadpool's 40 threads. Now a webhook gets a 503 (deliver again) after two 2 s
    timeouts (8 s allowed here: a loaded machine)."""
    settings = make_settings(sim.url, redis_url=private_redis.url)
    process = ReceiverProcess(settings, tmp_path)
    try:
        assert process.completed(42).json()["outcome"] == "unmatched"
        assert private_redis.popen is not None
        os.kill(private_redis.popen.pid, signal.SIGSTOP)
        began = time.monotonic()
        try:
            answer: httpx.Response | None = process.completed(42, timeout=8.0)
        except httpx.TimeoutException:
            answer = None
        took = time.monotonic() - began
        os.kill(private_redis.popen.pid, signal.SIGCONT)
        assert answer is not None and answer.status_code == 503, (
            f"no answer within {took:.1f} s while Redis did not answer (got {answer and answer.status_code})"
        )
    finally:
        process.stop()


def test_a_redis_that_refuses_connections_gets_a_503_within_a_few_seconds(
    sim: SimulatorHandle, tmp_path: Path, private_redis: RedisServer, redis_client: Any
) -> None:
    """HELD. A Redis that is down (connection refused) gets a 503 after the client's short retries."""
    settings = make_settings(sim.url, redis_url=private_redis.url)
    process = ReceiverProcess(settings, tmp_path)
    try:
        assert process.completed(42).json()["outcome"] == "unmatched"
        private_redis.kill()
        began = time.monotonic()
        answer = process.completed(42, timeout=10.0)
        took = time.monotonic() - began
        assert answer.status_code == 503
        assert took < 5.0, f"503 after {took:.1f} s"
    finally:
        process.stop()


def _rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


#: Connections the slowloris test holds open: past the receiver's limit (`DEFAULT_MAX_CONNECTIONS`, 256).
HELD_CONNECTIONS = 300


def _held_by(pid: int, port: int) -> int:
    """Established TCP connections the process `pid` has accepted on `port`."""
    import psutil

    return sum(
        1
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def _timed(call: Any) -> tuple[Any, float]:
    began = time.monotonic()
    return call(), time.monotonic() - began


def test_requests_that_never_finish_their_headers_are_bounded_by_the_receivers_connection_limit(
    running: tuple[Runtime, Client], receiver: ReceiverProcess, sim: SimulatorHandle
) -> None:
    """HELD since uvicorn runs the receiver with `limit_concurrency=256` (`worker/webhooks/__init__.py`): was BREAK
    (slowloris): with no bound, a connection whose request never completes was held open forever, for free (the
    secret is checked only once the headers are complete), each with up to h11's 16 KiB of buffered header, until
    the process ran out of file descriptors or memory (its pod's limit is 384 MiB). The receiver itself still has
    no header timeout (the deployment's proxy provides it, `deploy/components/webhooks`): the bound is that past
    256 connections every request is answered 503 at once (Cekura delivers again) instead of being served, the
    held connections cost a bounded amount of memory each, and once the slow clients go, webhooks are answered
    again."""
    _rt, _client = running
    from worker.webhooks import DEFAULT_MAX_CONNECTIONS

    assert HELD_CONNECTIONS > DEFAULT_MAX_CONNECTIONS
    pid, port = receiver.popen.pid, int(receiver.port)
    before = _rss_mib(pid)
    pad = b"X-Pad: " + b"a" * 15_000 + b"\r\n"
    socks = []
    try:
        for _ in range(HELD_CONNECTIONS):
            s = socket.create_connection((receiver.host, port))
            s.sendall(b"POST /webhooks/cekura HTTP/1.1\r\nHost: x\r\n" + pad)  # headers never end
            socks.append(s)
        wait_for(lambda: _held_by(pid, port) >= HELD_CONNECTIONS, 15, "the receiver to accept every connection")

        # Past the limit, a webhook is refused 503 at once: never held, never served.
        def refused_at_once() -> bool:
            answer, took = _timed(lambda: receiver.completed(987654, timeout=5.0))
            assert took < 2.0, f"a webhook past the limit took {took:.2f} s to be answered"
            return bool(answer.status_code == 503)

        wait_for(refused_at_once, 10, "webhooks past the connection limit to be answered 503")
        # A held connection that finishes its request past the limit gets its 503 at once, too.
        body = json.dumps({"event_type": "result.completed", "data": {"id": 987654}}).encode()
        last = socks[-1]
        last.settimeout(5.0)
        rest = b"X-CEKURA-SECRET: " + SECRET.encode() + b"\r\nContent-Type: application/json\r\n"
        rest += b"Content-Length: %d\r\n\r\n" % len(body) + body

        def finish_request() -> bytes:
            last.sendall(rest)
            return last.recv(65536)

        reply, took = _timed(finish_request)
        assert reply.startswith(b"HTTP/1.1 503 "), reply[:80]
        assert took < 2.0, f"the held connection's request was answered after {took:.2f} s"
        grown = _rss_mib(pid) - before
        print(f"{HELD_CONNECTIONS} held connections: receiver RSS grew {grown:.1f} MiB")
        assert grown < 64, f"{HELD_CONNECTIONS} held connections grew the receiver's RSS by {grown:.1f} MiB"
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: _held_by(pid, port) < DEFAULT_MAX_CONNECTIONS // 2, 15, "the held connections to close")
    wait_for(
        lambda: receiver.completed(987654).status_code == 200, 15, "webhooks to be answered once the slow clients go"
    )
    assert receiver.completed(987654).json() == {"outcome": "unmatched", "job_id": "", "verdict": "unknown"}


def test_webhooks_arriving_while_a_poll_holds_the_job_do_not_slow_the_receiver_down(
    sim: SimulatorHandle, tmp_path: Path, private_redis: RedisServer, redis_client: Any
) -> None:
    """HELD since busy retries are de-duplicated per result id (`Receiver.waiting`, one referenced task each): was
    BREAK: each webhook answered `busy` (a poll holds the job's lease) started its own `_when_free` task, with no
    de-duplication per result id and no bound: it runs `hasten` (a GET and an EVALSHA, through the threadpool)
    every 0.25 s for up to CEKURA_LEASE_S (30 s by default, 120 tries). A burst of copies while one poll is in
    flight (a Cekura call hanging up to half the lease) kept the receiver's 40 threads and Redis busy (~20,000
    commands/s for 1000 copies). Measured here, on a Redis of this test's own (so no other client's commands are
    counted), over a timed window: how fast another webhook is answered, and how many commands per second Redis
    serves while 1000 copies wait, against what it serves idle."""
    sim.reset()
    sim.clear_faults()
    sim.configure(duration_s=0.3, polls_to_complete=None, rate_limit_rps=0)
    settings = make_settings(
        sim.url,
        redis_url=private_redis.url,
        cekura_poll_overrides=SLOW,
        cekura_webhooks=True,
        cekura_webhook_safety_net_s=60,
        cekura_lease_s=30.0,
    )
    rt = setup(settings)
    bind_actors()
    w = _worker(rt)
    process = ReceiverProcess(settings, tmp_path)

    def commands_per_s(during: Any) -> float:
        before, began = int(rt.redis.info("stats")["total_commands_processed"]), time.monotonic()
        during()
        return (int(rt.redis.info("stats")["total_commands_processed"]) - before) / (time.monotonic() - began)

    try:
        client = Client(settings, client=rt.redis, broker=rt.broker)
        job_id, result_id = started_run(client, name="forever [hang]")
        idle_per_s = commands_per_s(lambda: time.sleep(1.0))
        server_ms = int(rt.redis.time()[0]) * 1000
        rt.redis.hset(rt.store.job_key(job_id), "lease", server_ms + 60_000)  # a poll holds the job (a hung call)
        verdicts = [answer.json()["verdict"] for answer in process.flood(int(result_id), 1000)]
        assert set(verdicts) == {"ok"}  # "busy" is answered as ok: the receiver tries again once the poll lets go
        latencies: list[float] = []

        def other_webhooks() -> None:
            for _ in range(10):
                answer, took = _timed(lambda: process.completed(987654))
                assert answer.status_code == 200
                latencies.append(took)
                time.sleep(0.1)
            time.sleep(1.0)

        per_s = commands_per_s(other_webhooks)
        worst = max(latencies)
    finally:
        process.stop()
        w.stop(timeout=10_000)
    print(f"busy flood: worst latency {worst:.3f} s, ~{per_s:.0f} Redis commands/s (idle: {idle_per_s:.0f}/s)")
    assert worst < 1.0 and per_s < 1000 + idle_per_s, (
        f"1000 busy webhooks: another webhook answered in up to {worst:.2f} s; the retry tasks make "
        f"~{per_s:.0f} Redis commands/s (idle: {idle_per_s:.0f}/s) for one job, for up to 30 s"
    )


# -- ids, bodies, headers -------------------------------------------------------------------------------------------


def test_a_webhook_naming_its_result_id_with_leading_zeros_still_finds_its_job(
    running: tuple[Runtime, Client], receiver: ReceiverProcess, sim: SimulatorHandle
) -> None:
    """HELD since result ids are normalised (`_result_id`: "050000" -> "50000", ASCII digits only): was BREAK
    (minor: a lost hint, the job ended on its safety-net poll instead): `_result_id` accepted any string of digits
    (`str(value).isdigit()`) and used it verbatim as the index key: "050000" was a valid result id for
    `_result_id`, but the index holds "50000", so the webhook was `unknown` and answered 200 `unmatched`: Cekura
    would not deliver it again. Unicode digits (fullwidth, Arabic-Indic) passed `isdigit()` as well; they are now
    refused as malformed. The job ends on the webhook's poll, a minute before its safety net."""
    _, client = running
    job_id, result_id = started_run(client)
    wait_for(lambda: ended_at_cekura(sim, result_id), 10, "the run to end at Cekura")
    fullwidth = result_id.translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})
    refused = receiver.post({"event_type": "result.completed", "data": {"id": fullwidth}})
    assert (refused.status_code, refused.json()["outcome"]) == (400, "malformed"), refused.text
    answer = receiver.post({"event_type": "result.completed", "data": {"id": "0" + result_id}})
    assert answer.json() == {"outcome": "matched", "job_id": job_id, "verdict": "ok"}, answer.text
    assert client.wait(job_id, timeout=20)["status"] == "completed"  # 60 s before its safety-net poll otherwise


def _raw_post(receiver: ReceiverProcess, header_lines: list[bytes], body: bytes) -> int:
    """POST `body` with exactly these header lines (no client normalising them); the answer's status code."""
    head = b"POST /webhooks/cekura HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
    head += b"".join(line + b"\r\n" for line in header_lines)
    head += b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    with socket.create_connection((receiver.host, int(receiver.port)), timeout=10) as s:
        s.sendall(head + body)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([b"X-CEKURA-SECRET: " + SECRET.encode(), b"X-CEKURA-SECRET: wrong"], 200),  # the first copy counts
        ([b"X-CEKURA-SECRET: wrong", b"X-CEKURA-SECRET: " + SECRET.encode()], 401),
        ([b"x-cekura-SECRET:  \t" + SECRET.encode() + b" \t"], 200),  # HTTP's optional whitespace is not the value
        ([b"X-CEKURA-SECRET: " + SECRET.encode() + b", " + SECRET.encode()], 401),  # a proxy folding two copies
        ([b"X-CEKURA-SECRET: " + SECRET.encode() + b"\x00"], 400),  # h11 refuses the request
        ([b"X-CEKURA-SECRET: " + SECRET.encode()[:-1] + b"\xe9"], 401),
        ([b"X-CEKURA-SECRET: " + SECRET.encode() + b"\r\n x"], 401),  # obsolete line folding: "<secret> x"
    ],
    ids=["right-then-wrong", "wrong-then-right", "whitespace-and-case", "folded", "nul", "latin1", "obs-fold"],
)
def test_secret_header_tricks(
    running: tuple[Runtime, Client], receiver: ReceiverProcess, headers: list[bytes], status: int
) -> None:
    """HELD: the first X-CEKURA-SECRET is the one compared; anything but the exact secret is refused."""
    body = json.dumps({"event_type": "result.completed", "data": {"id": 987654}}).encode()
    assert _raw_post(receiver, headers, body) == status


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_a_non_ascii_webhook_secret_is_accepted_when_cekura_sends_it(
    running: tuple[Runtime, Client], slow_settings: Settings, tmp_path: Path, encoding: str
) -> None:
    """HELD since the secret is compared on the raw header bytes, as UTF-8 or latin-1 (`Receiver.authentic`): was
    BREAK (configuration): CEKURA_WEBHOOK_SECRET is accepted with any characters and was compared as UTF-8 bytes,
    but Starlette decodes header bytes as latin-1 and `Receiver.authentic` re-encoded that text as UTF-8: the
    secret's own UTF-8 bytes, as Cekura sends them, never compared equal ("ä" arrives as b"\\xc3\\xa4", was read as
    "Ã¤", re-encoded as b"\\xc3\\x83\\xc2\\xa4"). With a secret such as "pässwort-for-webhooks-0123" every webhook
    was refused 401, silently, and runs ended on their safety-net poll only. (A sender that encodes the header as
    latin-1, as Python's http.client does, happened to match, and still does.)"""
    secret = "pässwort-for-webhooks-0123"
    process = ReceiverProcess(slow_settings, tmp_path, secret=secret)
    try:
        body = json.dumps({"event_type": "result.completed", "data": {"id": 987654}}).encode()
        status = _raw_post(process, [b"X-CEKURA-SECRET: " + secret.encode(encoding)], body)
    finally:
        process.stop()
    assert status == 200, f"{status}: the configured secret itself was refused"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"event_type": "result.completed", "data": ' * 100_000, 400),  # deep nesting: RecursionError
        (b'{"event_type": "result.completed", "data": {"id": 1' + b"0" * 5000 + b"}}", 400),  # > 4300 digits
        (b'{"event_type": "result.completed", "data": {"id": NaN}}', 400),
        (b'{"event_type": "result.completed", "data": {"id": 42.0}}', 400),
        (b'{"event_type": "result.completed", "data": {"id": -42}}', 400),
        (b'{"event_type": "result.completed", "data": {"id": true}}', 400),
        (b'{"event_type": "result.completed", "data": {"id": "4' + b"2" * 40 + b'"}}', 400),
        (b'\xff\xfe{"event_type": "result.completed"}', 400),  # not UTF-8 (a stray BOM)
        (b'{"event_type": "result.completed", "data": {"id": "\xff"}}', 400),
        ('{"event_type": "result.completed", "data": {"id": 987654}}'.encode("utf-16"), 200),  # JSON detects it
        (b'{"event_type": ["result.completed"]}', 200),  # another "type": ignored
        (b"", 400),
    ],
    ids=[
        "deep",
        "huge-int",
        "nan",
        "float",
        "negative",
        "bool",
        "41-digits",
        "bom",
        "bad-utf8",
        "utf16",
        "list-type",
        "empty",
    ],
)
def test_hostile_bodies_are_answered_without_harm(
    running: tuple[Runtime, Client], receiver: ReceiverProcess, sim: SimulatorHandle, raw: bytes, status: int
) -> None:
    """HELD: every hostile body gets a 4xx (or is ignored) and costs nothing; the receiver keeps serving."""
    answer = receiver.post(None, raw=raw)
    assert answer.status_code == status, answer.text
    assert receiver.http.get(receiver.url.replace("/webhooks/cekura", "/healthz")).status_code == 200
    assert polls_made(sim) == 0


def test_a_chunked_body_without_content_length_is_cut_at_the_limit(
    running: tuple[Runtime, Client], receiver: ReceiverProcess
) -> None:
    """HELD: with no Content-Length, the streamed size is counted and the request refused 413 at the limit."""
    chunk = b"x" * 1_000_000
    body = (chunk for _ in range(20))
    answer = receiver.http.post(
        receiver.url,
        content=body,
        headers={"X-CEKURA-SECRET": SECRET, "Content-Type": "application/json"},
    )
    assert answer.status_code == 413


def test_a_webhook_for_the_result_of_a_job_that_was_retried_does_nothing(
    running: tuple[Runtime, Client], receiver: ReceiverProcess, sim: SimulatorHandle
) -> None:
    """HELD: the first job's result still maps to the first job, which has ended (`finished`); the retry polls its
    own new result, indexed to itself."""
    _, client = running
    job_id, first_result = started_run(client)
    wait_for(lambda: ended_at_cekura(sim, first_result), 10, "the first run to end at Cekura")
    assert receiver.completed(int(first_result)).json()["outcome"] == "matched"
    assert client.wait(job_id, timeout=20)["status"] == "completed"
    retried = client.retry(job_id)
    wait_for(lambda: client.status(retried).get("progress_id"), 15)
    second_result = str(client.status(retried)["progress_id"])
    assert second_result != first_result
    polls = polls_made(sim)
    late = receiver.completed(int(first_result)).json()
    assert (late["job_id"], late["verdict"]) == (job_id, "finished")
    assert polls_made(sim) == polls  # `finished`: hasten.lua wrote no poll message
    wait_for(lambda: ended_at_cekura(sim, second_result), 10, "the second run to end at Cekura")
    assert receiver.completed(int(second_result)).json() == {"outcome": "matched", "job_id": retried, "verdict": "ok"}
    assert client.wait(retried, timeout=20)["status"] == "completed"


def test_a_webhook_for_a_job_still_looking_for_its_lost_start_costs_nothing(
    looking: tuple[Runtime, Client], slow_settings: Settings, tmp_path: Path, sim: SimulatorHandle
) -> None:
    """HELD: before the lookup adopts the run, no index entry names the job: the run's webhook is `unknown`."""
    _rt, client = looking
    process = ReceiverProcess(slow_settings, tmp_path)
    try:
        sim.set_faults(lost_start_rate=1.0, hang_s=0.5)
        job_id = client.submit("evaluator.run", {"scenarios": [1], "name": "lost"})
        wait_for(lambda: _in_lookup(client, job_id), 15, "the job to look for its run")
        sim.clear_faults()
        result_id = next(iter(sim.polls()))
        assert process.completed(int(result_id)).json()["verdict"] == "unknown"
        assert client.wait(job_id, timeout=20)["status"] == "completed"
    finally:
        process.stop()


def test_webhooks_during_a_cekura_outage_do_not_spend_the_jobs_error_budget(
    sim: SimulatorHandle, redis_client: Any, tmp_path: Path
) -> None:
    """HELD since `hasten.lua` answers `backoff` (outcome `unmatched`) for a job whose last call failed: was BREAK
    ("a webhook is a hint, never a verdict"): while Cekura answers 5xx, a job retries with exponential backoff and
    gives up only after CEKURA_MAX_CONSECUTIVE_ERRORS failures in a row (30 by default: about 25 minutes of outage
    at 1 s doubling to 60 s). `hasten.lua` made a poll due *now* whatever the job's backoff, and that poll's 5xx
    counted as one more consecutive error: a handful of webhooks (forged, duplicated, or Cekura re-delivering
    during its own incident) burnt the whole budget in seconds and the job ended `failed` "gave up after N
    consecutive transient errors" although its run was fine (and `fail` then stopped the healthy run at Cekura).
    Here: 5 errors allowed, first retry after 30 s. The first webhook's poll fails (errors 1); the next 10 webhooks
    are `unmatched` (`backoff`) and make no call: the job keeps its budget (errors still 1) and keeps polling."""
    sim.reset()
    sim.clear_faults()
    sim.configure(duration_s=0.3, polls_to_complete=None, rate_limit_rps=0)
    settings = make_settings(
        sim.url,
        cekura_poll_overrides=SLOW,
        cekura_webhooks=True,
        cekura_webhook_safety_net_s=60,
        cekura_max_consecutive_errors=5,
        cekura_retry_initial_s=30.0,
        cekura_retry_max_s=60.0,
    )
    rt = setup(settings)
    bind_actors()
    w = _worker(rt)
    process = ReceiverProcess(settings, tmp_path)
    try:
        client = Client(settings, client=rt.redis, broker=rt.broker)
        job_id, result_id = started_run(client, name="forever [hang]")
        sim.set_faults(error_rate=1.0)  # Cekura's outage begins
        assert process.completed(int(result_id)).json() == {"outcome": "matched", "job_id": job_id, "verdict": "ok"}
        wait_for(lambda: client.status(job_id).get("errors") == 1, 10, "the hastened poll to fail")
        calls = sim.stats()["requests_total"]
        answers = [process.completed(int(result_id)).json() for _ in range(10)]
        view = client.status(job_id)
        calls_after = sim.stats()["requests_total"]
    finally:
        sim.clear_faults()
        process.stop()
        w.stop(timeout=10_000)
    assert answers == [{"outcome": "unmatched", "job_id": job_id, "verdict": "backoff"}] * 10, answers
    assert calls_after == calls, f"{calls_after - calls} calls to Cekura while the job backed off"
    assert (view["state"], view["errors"]) == ("polling", 1), (
        f"webhooks during an outage spent the job's error budget: {view['state']} {view.get('status')}, "
        f"errors {view['errors']}: {view.get('error')}"
    )


def test_a_lookup_does_not_adopt_the_runs_of_jobs_whose_ids_extend_or_differ_in_case_from_its_own(
    rt: Runtime, client: Client, sim: SimulatorHandle
) -> None:
    """HELD: a name must end with the job's whole tag `[cw:<job id>~<check>]`: `[cw:a~...]` is not the end of
    `[cw:a:b~...]`, `[cw:a-1~...]`, `[cw:a.~...]`, and the case-insensitive search's `[cw:A~...]` is dropped by the
    case-sensitive match (its check differs too)."""
    job_id = client.submit("evaluator.run", {"scenarios": [1], "name": "mine"}, job_id="a")
    _lose_start_by_a_dead_worker(rt, job_id)
    others = [
        client.submit("evaluator.run", {"scenarios": [1], "name": "x"}, job_id=other)
        for other in ("a:b", "a-1", "a.", "A")
    ]
    w = _worker(rt)
    try:
        for other in others:
            assert client.wait(other, timeout=20)["status"] == "completed"
        event = client.wait(job_id, timeout=20)
    finally:
        w.stop(timeout=10_000)
    assert event["status"] == "failed" and "no result carries the tag [cw:a~" in event["error"], event["error"]
