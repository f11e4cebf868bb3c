"""Adversarial reproductions against the guarantee for starts that are not safe to repeat:

    A kind whose start is not safe to repeat (`repeatable_start=False`: evaluator.run, scenario.generate,
    scenario.from_transcript, metric.improve_from_feedback) is never re-sent once the request may have reached
    Cekura: the job ends `failed` with an error saying the start's outcome is unknown and it was not retried.
    Failures before the request was sent (refused connection, connect timeout, 429) are still retried. Zero
    duplicate starts under faults and kills; every job still ends in exactly one result event.

Each test asserts the guarantee (or the behaviour the start path promises next to it), so a test that fails
reproduces a defect. The simulator counts every start it accepts per kind and request key (`started_by_key`: an
evaluator run's `name`, a generation's `extra_instructions`, a transcript scenario's `name`, an improvement's
`metric_id`), so "started twice" is read at Cekura's side, not from the worker's logs.

In-process tests use the shared `rt` / `worker` / `client` / `sim` fixtures (real Redis, real dramatiq.Worker, the
simulator over HTTP); a few build their own runtime with a short lease and a reconciler thread, so that what a lapsed
lease leads to shows within seconds. System tests run real `cekura-worker run` processes (`system` fixture), which
they SIGKILL, SIGSTOP, or connect to Redis through a proxy that loses one reply.

Known defects reproduced here (these tests fail until fixed):

- DUPLICATE START: `test_a_replayed_retry_record_does_not_reopen_a_start_another_worker_has_in_flight` and its
  system twin `test_a_retry_record_replayed_after_a_partition_does_not_start_a_second_operation`: after a start
  that certainly never left (refused, 429), the `advance` that records the retry is replayed by redis-py after a lost
  reply; advance.lua accepts any `starting` job for the start phase (no seq or owner check), so the replay lands on
  another worker's in-flight start, clears `start_sent` and requeues the retry message, and the start is sent again.
- `test_a_lost_advance_reply_after_a_start_does_not_cancel_the_jobs_own_operation` and its system twin
  `test_a_start_whose_recording_reply_is_lost_on_the_network_still_completes`: redis-py re-sends the `advance`
  EVALSHA after a lost reply; the second run answers `stale` (the first already moved the job to `polling`), and
  `_start` takes that for a duplicate start and cancels the job's one and only operation at Cekura (also
  `scenario.agent`'s session).
- `test_a_lost_start_claim_reply_is_retried_not_failed_as_unknown` and
  `test_a_refused_start_whose_retry_could_not_be_recorded_is_retried`: a start that certainly never reached Cekura
  ends `failed` "outcome unknown" because a Redis error around it left `start_sent` = 1.
- `test_a_2xx_start_answer_that_cannot_be_read_fails_saying_the_outcome_is_unknown`: Cekura accepted the start
  (2xx) but the answer is unreadable; the job fails "invalid response", never saying the operation may run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dramatiq
import pytest
import redis

import worker.runtime.connection as redis_connection
from actors.kinds import KINDS
from config.settings import Settings, load_settings
from simulator import SimConfig, SimulatorHandle, start_in_thread
from tests.support import free_port, pending_messages, wait_for
from tests.system.conftest import TRANSCRIPT, UNKNOWN_START, System
from worker.client import Client
from worker.errors import TransientError
from worker.runtime.app import Runtime, bind_actors, setup
from worker.runtime.reconciler import Reconciler, reconcile_once
from worker.store import scripts
from worker.store.records import Phase

#: The simulator's API key in the in-process fixtures (tests/conftest.py).
SIM_API_KEY = "sim-key"

#: The error of a job failed by the attempt after one that stopped mid-start (a kill, a pause, a lost claim).
EARLIER_ATTEMPT = "an earlier attempt stopped during the start call"

#: Kinds whose start must not be repeated, and the simulator's name for each.
SIM_KIND = {
    "evaluator.run": "evaluator_run",
    "scenario.generate": "scenario_generate",
    "scenario.from_transcript": "scenario_from_transcript",
    "metric.improve_from_feedback": "metric_improve",
}
NON_REPEATABLE = tuple(SIM_KIND)


def test_the_kinds_under_attack_are_the_ones_that_must_not_repeat() -> None:
    assert {name for name, kind in KINDS.items() if not kind.repeatable_start} == set(NON_REPEATABLE)


_metric_ids = iter(range(5000, 6000))  # not a steering id (333, 555, 777, 900-999)


@dataclass(frozen=True)
class Job:
    """A job of a kind that must not repeat, and the key the simulator counts its starts under."""

    job_id: str
    kind: str
    params: dict[str, Any]
    key: str

    def starts(self, stats: dict[str, Any]) -> int:
        # An evaluator run's name ends with its job's tag (` [cw:<job id>~<check>]`): counted by the name before it.
        keys = stats["started_by_key"].get(SIM_KIND[self.kind], {})
        return sum(int(n) for key, n in keys.items() if key.split(" [cw:", 1)[0] == self.key)


def make_job(kind: str, job_id: str) -> Job:
    if kind == "evaluator.run":
        return Job(job_id, kind, {"scenarios": [1, 2], "name": job_id}, job_id)  # the run's name, before its tag
    if kind == "scenario.generate":
        return Job(job_id, kind, {"num_scenarios": 2, "extra_instructions": job_id}, job_id)
    if kind == "scenario.from_transcript":
        return Job(job_id, kind, {"transcript_json": TRANSCRIPT, "name": job_id}, job_id)
    metric_id = next(_metric_ids)
    return Job(job_id, kind, {"metric_id": metric_id}, str(metric_id))


def one_of_each(prefix: str) -> list[Job]:
    return [make_job(kind, f"{prefix}-{kind.replace('.', '-')}") for kind in NON_REPEATABLE]


def submit(client: Client, jobs: list[Job], **kwargs: Any) -> None:
    for job in jobs:
        client.submit(job.kind, job.params, job_id=job.job_id, **kwargs)


def events_of(raw: redis.Redis, job_id: str, stream: str = "cekura:results") -> list[dict[str, str]]:
    out = []
    for _, fields in raw.xrange(stream):
        event = {k.decode(): v.decode() for k, v in fields.items()}
        if event.get("job_id") == job_id:
            out.append(event)
    return out


def assert_started_at_most_once(jobs: list[Job], stats: dict[str, Any]) -> None:
    twice = {job.job_id: job.starts(stats) for job in jobs if job.starts(stats) > 1}
    assert not twice, f"started more than once at Cekura: {twice}"


def assert_unknown(event: dict[str, str]) -> None:
    """The job of a start that may have reached Cekura: failed "outcome unknown", never sent again; or, for an
    evaluator run (issue 21), the run its one start made found again by its tag and polled to its verdict."""
    if event["kind"] == "evaluator.run" and event["status"] == "completed":
        assert event["progress_id"], event  # found by its tag; when nothing was found, it failed as below
        return
    assert event["status"] == "failed", event
    assert event["error"].startswith(UNKNOWN_START), event["error"]
    assert "it was not sent again because this kind's start is not safe to repeat" in event["error"], event["error"]


def state_of(rt: Runtime, job_id: str) -> str:
    return (rt.store.get(job_id) or {}).get("state", "")


# -- tools: losing one Redis reply after Redis ran the command -------------------------------------------------------


def lose_one_reply(monkeypatch: pytest.MonkeyPatch, script: str, phase: str, *, times: int = 1) -> list[Any]:
    """Make the next `times` calls of `<script>.lua` for `phase` run in Redis and then lose their reply, as a
    connection dropped after the command was sent does: the worker's per-thread connection sees a ConnectionError
    and retries the command (redis-py's Retry), exactly as it would on the wire. Returns the replies lost."""
    sha = hashlib.sha1(scripts.source(script).encode()).hexdigest()
    real = redis_connection._round_trip
    lost: list[Any] = []

    def lossy(connection: Any, args: tuple[Any, ...]) -> Any:
        reply = real(connection, args)
        ours = len(args) > 3 and args[0] == "EVALSHA" and args[1] == sha and args[3 + int(args[2])] == phase
        if ours and len(lost) < times:
            lost.append(reply)
            connection.disconnect()
            raise redis.ConnectionError("injected: the reply was lost after Redis ran the script")
        return reply

    monkeypatch.setattr(redis_connection, "_round_trip", lossy)
    return lost


@dataclass
class Quick:
    """An in-process worker with a short lease and its own reconciler thread."""

    rt: Runtime
    client: Client
    settings: Settings


@contextlib.contextmanager
def quick_runtime(settings: Settings, **overrides: Any) -> Iterator[Quick]:
    values = {
        **settings.model_dump(),
        "cekura_lease_s": 2.0,
        "cekura_http_timeout_s": 0.5,
        "cekura_reconcile_grace_s": 0.5,
        "cekura_reconcile_interval_s": 0.2,
        **overrides,
    }
    quick = load_settings(**values)
    rt = setup(quick)
    bind_actors()
    w = dramatiq.Worker(rt.broker, worker_threads=4, worker_timeout=100)
    w.start()
    reconciler = Reconciler(rt)
    reconciler.start()
    try:
        yield Quick(rt, Client(quick, client=rt.redis, broker=rt.broker), quick)
    finally:
        reconciler.stop()
        w.stop(timeout=10_000)
        reconciler.join(timeout=5)


# =====================================================================================================================
# 1. Redis errors around the start step
# =====================================================================================================================


@pytest.mark.parametrize("kind", ["evaluator.run", "metric.improve_from_feedback", "scenario.agent"])
def test_a_lost_advance_reply_after_a_start_does_not_cancel_the_jobs_own_operation(
    rt: Runtime,
    worker: dramatiq.Worker,
    client: Client,
    sim: SimulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """BREAK. The start succeeds; `advance` runs in Redis (the job is now `polling`, its first poll written) but its
    reply is lost. redis-py retries the EVALSHA on a new connection; the second run finds the job no longer
    `starting` and answers `stale`. `_start` (actors/jobs.py, the `elif kind.cancel_path and done.verdict in
    (FINISHED, STALE)` branch) takes that for "another attempt started the job" and sends `cancel_remote`, which
    stops the job's one and only operation at Cekura (end_calls / process_feedbacks_cancel): a CI run that was
    going to pass ends `cancelled`. (`scenario.agent`, whose start may repeat, loses its session the same way.)"""
    lost = lose_one_reply(monkeypatch, "advance", "start")
    job_id = f"lost-advance-{kind.replace('.', '-')}"
    if kind == "scenario.agent":
        client.submit(kind, {"user_message": "more detail", "scenarios": [1, 2]}, job_id=job_id)
    else:
        job = make_job(kind, job_id)
        submit(client, [job])
    event = client.wait(job_id, timeout=60)
    assert lost, "the injection never fired"
    stats = sim.stats()
    if kind != "scenario.agent":
        assert job.starts(stats) == 1
    job_id_events = events_of(rt.redis, job_id)
    assert len(job_id_events) == 1
    assert event["status"] == "completed", (
        f"the job's own operation was cancelled after a lost advance reply: {event['status']} / {event['error']}; "
        f"cancel calls: {[r for r in stats['by_route'] if 'end_calls' in r or 'cancel' in r]}"
    )


def test_a_lost_start_claim_reply_is_retried_not_failed_as_unknown(
    settings: Settings, sim: SimulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BREAK (fails safe). The start claim runs in Redis (`start_sent` = 1, lease taken) but its reply is lost:
    redis-py re-sends the claim, which finds the lease held (`stale`) and the message is dropped. Nothing was sent to
    Cekura, yet after lease + grace the reconciler's attempt sees `start_sent` and fails the job "the start call's
    outcome is unknown (an earlier attempt stopped during the start call)". The guarantee says a start that never
    reached Cekura is retried."""
    with quick_runtime(settings) as q:
        lost = lose_one_reply(monkeypatch, "claim", "start")
        job = make_job("evaluator.run", "lost-claim")
        submit(q.client, [job])
        event = q.client.wait(job.job_id, timeout=60)
    assert lost, "the injection never fired"
    assert job.starts(sim.stats()) <= 1
    assert event["status"] == "completed", (
        f"a start that never reached Cekura ended {event['status']}: {event['error']} "
        f"(starts at Cekura: {job.starts(sim.stats())})"
    )


@pytest.mark.xfail(
    strict=True,
    reason="a known edge that fails safe: when Redis fails right after a start was refused (nothing sent), the "
    "mark made just before the call can't be cleared, so the next attempt fails the job 'outcome unknown' rather "
    "than risk a duplicate (README, 'Starts that are not repeated')",
)
def test_a_refused_start_whose_retry_could_not_be_recorded_is_retried(
    settings: Settings, sim: SimulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BREAK (fails safe). The start's connection is refused (certainly unsent); recording the retry (`advance`
    with `start_sent` = "") fails with a Redis error, so Dramatiq retries the message, which finds the lease held.
    After lease + grace the reconciler's attempt reads the `start_sent` = 1 the first claim left and fails the job
    as "outcome unknown", though no request ever left the worker. (A SIGKILL between the refused connect and the
    advance ends the same way.)"""
    with quick_runtime(settings) as q:
        rt = q.rt
        real_start, real_advance = rt.cekura.start, rt.store.advance
        refused: list[int] = []
        broken: list[int] = []

        def refuse_once(kind: Any, params: Any, **kwargs: Any) -> Any:
            if not refused:
                refused.append(1)
                raise TransientError("POST /start: connection failed (ConnectError: refused)", maybe_sent=False)
            return real_start(kind, params, **kwargs)

        def advance_fails_once(job_id: str, phase: Phase, seq: int, **kwargs: Any) -> Any:
            if phase is Phase.START and kwargs["fields"].get("start_sent") == "" and not broken:
                broken.append(1)
                raise redis.ConnectionError("injected: Redis went away while recording the retry")
            return real_advance(job_id, phase, seq, **kwargs)

        monkeypatch.setattr(rt.cekura, "start", refuse_once)
        monkeypatch.setattr(rt.store, "advance", advance_fails_once)
        job = make_job("scenario.generate", "refused-unrecorded")
        submit(q.client, [job])
        event = q.client.wait(job.job_id, timeout=60)
    assert refused and broken
    assert job.starts(sim.stats()) <= 1
    assert event["status"] == "completed", (
        f"a start refused before anything was sent ended {event['status']}: {event['error']} "
        f"(starts at Cekura: {job.starts(sim.stats())})"
    )


def test_a_replayed_retry_record_does_not_reopen_a_start_another_worker_has_in_flight(
    rt: Runtime,
    worker: dramatiq.Worker,
    client: Client,
    sim: SimulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BREAK: a DUPLICATE START. Worker A's start is refused (certainly unsent), so A records a retry: `advance`
    moves the job back to `queued`, clears `start_sent` and writes retry message M. Redis ran it, but A's link to
    Redis fails before the reply arrives, and A's Redis client only gets through again after a while (a partition,
    a slow reconnect). Meanwhile M came due: worker B claimed it and sent the start, which Cekura is processing.
    A's client now re-sends the same `advance` (redis-py's Retry). advance.lua checks only `state == 'starting'` for
    the start phase (not the seq, not the lease owner), so the replay applies again: the job is `queued` with
    `start_sent` cleared while B's start is in flight, and M is queued once more. Worker C takes M, its claim sees
    no earlier start, and C sends the start a second time."""
    sim.set_faults(latency_ms=1500)  # B's start stays at Cekura while A's client replays its write
    job = make_job("scenario.generate", "replayed-retry")
    real_start = rt.cekura.start
    refused: list[int] = []

    def refuse_once(kind: Any, params: Any, **kwargs: Any) -> Any:
        if not refused:
            refused.append(1)
            raise TransientError("POST /start: connection failed (ConnectError: refused)", maybe_sent=False)
        return real_start(kind, params, **kwargs)

    sha = hashlib.sha1(scripts.source("advance").encode()).hexdigest()
    real_round_trip = redis_connection._round_trip
    replayed: list[int] = []

    def reply_lost_until_b_started(connection: Any, args: tuple[Any, ...]) -> Any:
        reply = real_round_trip(connection, args)
        if not replayed and args[0] == "EVALSHA" and args[1] == sha and args[8] == "start":
            replayed.append(1)
            # A's link is down until the retry it recorded has been taken by another worker and sent to Cekura.
            give_up = time.monotonic() + 10
            while time.monotonic() < give_up and job.starts(sim.stats()) < 1:
                time.sleep(0.02)
            connection.disconnect()
            raise redis.ConnectionError("injected: the reply was lost and the link stayed down for a while")
        return reply

    monkeypatch.setattr(rt.cekura, "start", refuse_once)
    monkeypatch.setattr(redis_connection, "_round_trip", reply_lost_until_b_started)
    submit(client, [job])
    event = client.wait(job.job_id, timeout=60)
    time.sleep(2.0)  # a duplicate's answer and its advance come in now
    sim.clear_faults()
    assert refused and replayed
    assert len(events_of(rt.redis, job.job_id)) == 1
    assert job.starts(sim.stats()) == 1, (
        f"{job.kind} started {job.starts(sim.stats())} times at Cekura (job ended {event['status']})"
    )


def test_a_redis_error_recording_a_successful_start_fails_unknown_without_a_second_start(
    settings: Settings, sim: SimulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HELD. The start reached Cekura; recording it fails (Redis error, not just a lost reply). Dramatiq retries the
    message (lease held: stale), the reconciler takes it up after lease + grace and, seeing `start_sent`, fails
    each job as unknown instead of starting again."""
    with quick_runtime(settings) as q:
        rt = q.rt
        real_advance = rt.store.advance
        broken: set[str] = set()

        def advance_fails(job_id: str, phase: Phase, seq: int, **kwargs: Any) -> Any:
            if phase is Phase.START and job_id not in broken:
                broken.add(job_id)
                raise redis.ConnectionError("injected: advance lost")
            return real_advance(job_id, phase, seq, **kwargs)

        monkeypatch.setattr(rt.store, "advance", advance_fails)
        jobs = one_of_each("advance-error")
        submit(q.client, jobs)
        events = {job.job_id: q.client.wait(job.job_id, timeout=60) for job in jobs}
        time.sleep(1.0)  # any late duplicate would show now
    stats = sim.stats()
    for job in jobs:
        assert job.starts(stats) == 1, job
        assert len(events_of(q.rt.redis, job.job_id)) == 1
        assert_unknown(events[job.job_id])
        assert job.kind == "evaluator.run" or EARLIER_ATTEMPT in events[job.job_id]["error"]  # a run is found again


# =====================================================================================================================
# 2. Faults on the start call itself
# =====================================================================================================================


@pytest.mark.parametrize(
    ("fault", "faults", "reached"),
    [
        ("5xx", {"error_rate": 1.0}, 0),
        ("dropped connection", {"drop_rate": 1.0}, 0),
        ("hang past the call limit", {"hang_rate": 1.0, "hang_s": 4.0}, 1),
    ],
)
def test_a_start_that_may_have_reached_cekura_fails_unknown_and_is_never_resent(
    rt: Runtime,
    worker: dramatiq.Worker,
    client: Client,
    sim: SimulatorHandle,
    fault: str,
    faults: dict[str, float],
    reached: int,
) -> None:
    """HELD. A 5xx, a connection dropped after the request was written, and an answer held past the call's limit all
    end the job `failed` with the documented message; the start is counted at Cekura at most once (`reached`: the
    simulator creates the job of a hung start, not of a dropped or 5xx one)."""
    sim.set_faults(**faults)
    jobs = one_of_each(f"fault-{fault.split()[0]}")
    submit(client, jobs)
    events = {job.job_id: client.wait(job.job_id, timeout=60) for job in jobs}
    sim.clear_faults()
    time.sleep(0.5)
    stats = sim.stats()
    for job in jobs:
        assert_unknown(events[job.job_id])
        assert job.starts(stats) == reached, (job, stats["started_by_key"])
        assert len(events_of(rt.redis, job.job_id)) == 1


def test_a_rate_limited_start_is_retried_and_started_once(
    rt: Runtime, worker: dramatiq.Worker, client: Client, sim: SimulatorHandle
) -> None:
    """HELD. A 429 certainly started nothing: the start is retried after the fleet-wide cooldown and runs once."""
    sim.set_faults(rate_429=1.0, retry_after_s=0.5)
    jobs = one_of_each("throttled")
    submit(client, jobs)
    wait_for(
        lambda: all("HTTP 429" in (client.status(j.job_id) or {}).get("error", "") for j in jobs),
        what="every start to have been throttled",
    )
    sim.clear_faults()
    events = {job.job_id: client.wait(job.job_id, timeout=60) for job in jobs}
    stats = sim.stats()
    for job in jobs:
        assert events[job.job_id]["status"] == "completed", events[job.job_id]
        assert job.starts(stats) == 1
    assert sum(n for (name_status, n) in stats["by_route"].items() if name_status.endswith(" 429")) >= len(jobs)


class _FullBacklog:
    """A listening socket that never accepts, its accept queue filled: a connect to it times out (no SYN-ACK)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = int(self.listener.getsockname()[1])
        self.fillers: list[socket.socket] = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", self.port))
            self.fillers.append(filler)
        time.sleep(0.2)

    def close(self) -> None:
        for filler in self.fillers:
            filler.close()
        self.listener.close()


@pytest.mark.parametrize("failure", ["refused", "connect timeout"])
def test_a_start_that_never_connected_is_retried_until_cekura_answers_and_runs_once(
    settings: Settings, failure: str
) -> None:
    """HELD. Cekura is unreachable: nothing listens (ECONNREFUSED), or the host never answers the SYN (a connect
    timeout). Every kind that must not repeat keeps retrying its start; once Cekura listens on that port, each job
    starts exactly once and completes."""
    blocker = _FullBacklog() if failure == "connect timeout" else None
    port = blocker.port if blocker is not None else free_port()
    sim: SimulatorHandle | None = None
    try:
        with quick_runtime(
            settings, cekura_api_url=f"http://127.0.0.1:{port}", cekura_lease_s=4.0, cekura_http_timeout_s=0.5
        ) as q:
            jobs = one_of_each(f"unreachable-{failure.split()[0]}")
            submit(q.client, jobs)
            expected = "ConnectTimeout" if blocker is not None else "connection failed"
            wait_for(
                lambda: all(
                    (v := q.client.status(j.job_id)) and v.get("errors", 0) >= 2 and expected in v.get("error", "")
                    for j in jobs
                ),
                what=f"two {failure} retries of every start",
            )
            for job in jobs:
                assert (q.client.status(job.job_id) or {}).get("state") in ("queued", "starting")
            if blocker is not None:
                blocker.close()
                blocker = None
            sim = start_in_thread(SimConfig(api_key=SIM_API_KEY, port=port, duration_s=0.3))
            events = {job.job_id: q.client.wait(job.job_id, timeout=60) for job in jobs}
            time.sleep(0.5)
            stats = sim.stats()
        for job in jobs:
            assert events[job.job_id]["status"] == "completed", events[job.job_id]
            assert job.starts(stats) == 1
    finally:
        if blocker is not None:
            blocker.close()
        if sim is not None:
            sim.stop()


def test_a_2xx_start_answer_that_cannot_be_read_fails_saying_the_outcome_is_unknown(
    rt: Runtime, worker: dramatiq.Worker, client: Client, sim: SimulatorHandle
) -> None:
    """BREAK (message only; nothing is re-sent). Cekura answered the start with a 2xx whose body can't be used (not
    JSON here; equally a body over CEKURA_MAX_RESPONSE_BYTES or without a usable progress id). The request certainly
    reached Cekura and was accepted, so the operation may well be running, yet `CekuraClient.start` raises a plain
    `PermanentError` and the job fails "invalid response from ...", with no word that the outcome is unknown. A
    consumer told "invalid response" is invited to retry (`cekura-worker retry`), i.e. to start a duplicate."""
    sim.set_faults(malformed_rate=1.0)
    jobs = one_of_each("malformed")
    submit(client, jobs)
    events = {job.job_id: client.wait(job.job_id, timeout=60) for job in jobs}
    sim.clear_faults()
    stats = sim.stats()
    assert_started_at_most_once(jobs, stats)
    for job in jobs:
        assert events[job.job_id]["status"] == "failed"
        assert len(events_of(rt.redis, job.job_id)) == 1
    bad = {j: e["error"] for j, e in events.items() if not e["error"].startswith(UNKNOWN_START)}
    assert not bad, f"accepted (2xx) starts failed without saying their outcome is unknown: {bad}"


def test_a_kept_alive_connection_the_server_closed_does_not_make_a_start_unknown(
    rt: Runtime, worker: dramatiq.Worker, client: Client, sim: SimulatorHandle
) -> None:
    """HELD. Every worker thread holds a kept-alive connection (warmed up by repeatable jobs); the server closes them
    all while idle. A start over such a connection would fail after writing the request (outcome unknown); a start
    that must not repeat opens a fresh connection, so each completes."""
    for round_ in range(3):
        warm = [client.submit("agent.auto_fetch", {"agent_id": 5}, job_id=f"warm-{round_}-{i}") for i in range(8)]
        for job_id in warm:
            assert client.wait(job_id, timeout=60)["status"] == "completed"
        sim.close_connections()
        time.sleep(0.05)
        jobs = one_of_each(f"keepalive-{round_}")
        submit(client, jobs)
        events = {job.job_id: client.wait(job.job_id, timeout=60) for job in jobs}
        stats = sim.stats()
        for job in jobs:
            assert events[job.job_id]["status"] == "completed", events[job.job_id]
            assert job.starts(stats) == 1


# =====================================================================================================================
# 3. Duplicates: messages, the reconciler, cancels
# =====================================================================================================================


def test_duplicate_start_messages_and_the_reconciler_during_slow_starts_make_one_call_each(
    rt: Runtime, worker: dramatiq.Worker, client: Client, sim: SimulatorHandle
) -> None:
    """HELD. While each start is at Cekura (1 s latency, within the call limit), five more start messages per job are
    sent, the same job ids are submitted again, and the reconciler is made to think every job overdue. Only the
    claim holder calls; every job completes with one start."""
    from actors.jobs import start

    sim.set_faults(latency_ms=1000)
    second = dramatiq.Worker(rt.broker, worker_threads=4, worker_timeout=100)  # a second worker on the same queue
    second.start()
    try:
        jobs = one_of_each("dup")
        submit(client, jobs)
        wait_for(lambda: all(job.starts(sim.stats()) >= 1 for job in jobs), what="every start at Cekura")
        for job in jobs:
            for _ in range(5):
                start.send(job.job_id)
            client.submit(job.kind, job.params, job_id=job.job_id)  # the idempotency key: the same job again
            rt.redis.zadd(rt.store.schedule_key, {job.job_id: 0})
        assert reconcile_once(rt) == len(jobs)
        events = {job.job_id: client.wait(job.job_id, timeout=60) for job in jobs}
        sim.clear_faults()
        time.sleep(0.5)
    finally:
        second.stop(timeout=10_000)
    stats = sim.stats()
    for job in jobs:
        assert events[job.job_id]["status"] == "completed", events[job.job_id]
        assert job.starts(stats) == 1
        assert len(events_of(rt.redis, job.job_id)) == 1


def _stopped_at_cekura(stats: dict[str, Any]) -> int:
    """How many operations were stopped at Cekura (the kinds with a cancel operation)."""
    routes = stats["by_route"].items()
    return sum(n for route, n in routes if route.startswith(("end_calls", "process_feedbacks_cancel")))


def test_a_job_cancelled_while_its_start_is_in_flight_ends_once_and_is_not_started_again(
    settings: Settings, sim: SimulatorHandle
) -> None:
    """HELD. A cancel lands while the start call is at Cekura: the job ends `cancelled` once; the start's late
    answer finds it finished and, where the kind can, its operation is stopped at Cekura; nothing is re-sent."""
    # Each start stays at Cekura for 2 s (the time the test has to see it `starting` and cancel it), well within
    # the call's limit (half the 10 s lease), so a busy machine can't turn its late answer into a timeout.
    sim.set_faults(latency_ms=2000)
    jobs = one_of_each("cancel-in-start")
    with quick_runtime(settings, cekura_lease_s=10.0, cekura_http_timeout_s=5.0) as q:
        rt, client = q.rt, q.client
        submit(client, jobs)
        wait_for(lambda: all(job.starts(sim.stats()) >= 1 for job in jobs), what="every start at Cekura")
        for job in jobs:
            assert state_of(rt, job.job_id) == "starting"
            assert client.cancel(job.job_id).result == "cancelled"
        # The starts answer: the two kinds with a cancel operation stop their orphan, and once no message is left,
        # any re-send there was to be has been made.
        wait_for(lambda: _stopped_at_cekura(sim.stats()) >= 2, what="the orphans to be stopped at Cekura")
        wait_for(
            lambda: pending_messages(rt.redis, rt.broker.namespace, rt.settings.cekura_queue) == 0,
            what="every message to be handled",
        )
        sim.clear_faults()
        stats = sim.stats()
        for job in jobs:
            events = events_of(rt.redis, job.job_id)
            assert [e["status"] for e in events] == ["cancelled"]
            assert job.starts(stats) == 1
    assert _stopped_at_cekura(stats) == 2, stats["by_route"]


def test_a_start_past_its_deadline_while_in_flight_times_out_once_without_a_second_start(
    rt: Runtime, worker: dramatiq.Worker, client: Client, sim: SimulatorHandle
) -> None:
    """HELD. The deadline passes while the start is at Cekura: the job ends once, and nothing is re-sent."""
    sim.set_faults(hang_rate=1.0, hang_s=3.0)
    jobs = one_of_each("deadline-in-start")
    submit(client, jobs, deadline_s=1)
    events = {job.job_id: client.wait(job.job_id, timeout=60) for job in jobs}
    sim.clear_faults()
    time.sleep(0.5)
    stats = sim.stats()
    for job in jobs:
        assert events[job.job_id]["status"] in ("timed_out", "failed"), events[job.job_id]
        if events[job.job_id]["status"] == "failed":
            assert_unknown(events[job.job_id])
        assert job.starts(stats) == 1
        assert len(events_of(rt.redis, job.job_id)) == 1


# =====================================================================================================================
# 4. Real processes: kills, pauses, Redis restarts, a lossy network to Redis, mixed faults
# =====================================================================================================================

#: A lease long enough to act inside a start call (call limit 2 s), short enough for the reconciler to act soon.
KILL_ENV = {"CEKURA_LEASE_S": "4", "CEKURA_HTTP_TIMEOUT_S": "2", "CEKURA_RECONCILE_GRACE_S": "1"}


def _system_jobs(system: System, prefix: str) -> tuple[Any, Any, list[Job]]:
    server = system.redis()
    sim = system.simulator()
    return server, sim, one_of_each(prefix)


def test_a_worker_killed_during_its_start_calls_is_not_followed_by_a_second_start(system: System) -> None:
    """HELD. Worker A's start calls are at Cekura (the simulator took them and holds the answers); A is SIGKILLed.
    Worker B's reconciler takes each job up after lease + grace and fails it "outcome unknown" without calling."""
    server, sim, jobs = _system_jobs(system, "killed")
    sim.set_faults(hang_rate=1.0, hang_s=30)
    # A call limit of 4 s (half the lease): the time the test has to kill A before A times its own calls out.
    env = system.worker_env(server, sim, **{**KILL_ENV, "CEKURA_LEASE_S": "8"})
    a = system.worker(env, processes=1, threads=4)
    client = system.client(server)
    submit(client, jobs, deadline_s=120)
    system.wait_for(lambda: all(j.starts(sim.stats()) == 1 for j in jobs), timeout=30, what="every start at Cekura")
    os.killpg(a.pid, signal.SIGKILL)
    with server.client() as raw:
        assert not [e for j in jobs for e in events_of(raw, j.job_id)], "A ended a job before it was killed"
        sim.set_faults(hang_rate=0.0)
        system.worker(env, processes=1, threads=4)
        finished = system.wait_all_finished(raw, {j.job_id for j in jobs}, timeout=60)
        time.sleep(1.0)
        system.assert_exactly_one_event_each(raw, {j.job_id for j in jobs})
    stats = sim.stats()
    for job in jobs:
        assert_unknown(finished[job.job_id])
        assert job.kind == "evaluator.run" or EARLIER_ATTEMPT in finished[job.job_id]["error"]  # a run is found again
        assert job.starts(stats) == 1


def test_a_worker_killed_between_its_claim_and_the_call_starts_the_job_once(system: System) -> None:
    """HELD. The Redis state of a worker killed right after its start claim, before it marked the start as sent
    (the test makes the claim, as that worker did, then "dies"). The queued start message finds the lease held;
    after lease + grace the reconciler's attempt starts the job, once: nothing had been sent."""
    server, sim, jobs = _system_jobs(system, "claimed")
    env = system.worker_env(server, sim, **KILL_ENV)
    client = system.client(server)
    submit(client, jobs, deadline_s=120)
    rt_settings = load_settings(
        redis_url=server.url, cekura_lease_s=4, cekura_http_timeout_s=2, cekura_reconcile_grace_s=1
    )
    from worker.runtime.connection import connect
    from worker.store.jobs import JobStore

    store = JobStore(connect(rt_settings), rt_settings)
    for job in jobs:
        assert store.claim(job.job_id, Phase.START, 0).verdict == "ok"
    system.worker(env, processes=2, threads=2)
    with server.client() as raw:
        finished = system.wait_all_finished(raw, {j.job_id for j in jobs}, timeout=60)
        time.sleep(0.5)
        system.assert_exactly_one_event_each(raw, {j.job_id for j in jobs})
    stats = sim.stats()
    for job in jobs:
        assert finished[job.job_id]["status"] == "completed", finished[job.job_id]
        assert job.starts(stats) == 1


def test_a_worker_paused_past_its_lease_during_a_start_is_not_followed_by_a_second_start(system: System) -> None:
    """HELD for these kinds (the README's known limit concerns kinds whose start may repeat). A's start calls are at
    Cekura when A is SIGSTOPped past its lease; B takes the jobs up and fails them "outcome unknown" without
    calling. A resumes: its calls are past their deadline, their answers are dropped, nothing ends twice."""
    server, sim, jobs = _system_jobs(system, "paused")
    sim.set_faults(hang_rate=1.0, hang_s=3.0)
    env = system.worker_env(server, sim, **KILL_ENV)
    a = system.worker(env, processes=1, threads=4)
    client = system.client(server)
    submit(client, jobs, deadline_s=120)
    system.wait_for(lambda: all(j.starts(sim.stats()) == 1 for j in jobs), timeout=30, what="every start at Cekura")
    os.killpg(a.pid, signal.SIGSTOP)
    try:
        sim.set_faults(hang_rate=0.0)
        system.worker(env, processes=1, threads=4)  # B
        with server.client() as raw:
            system.wait_all_finished(raw, {j.job_id for j in jobs}, timeout=60)
    finally:
        os.killpg(a.pid, signal.SIGCONT)
    time.sleep(3.0)  # A's threads wake, find their deadlines passed, and try to record what they saw
    with server.client() as raw:
        system.assert_exactly_one_event_each(raw, {j.job_id for j in jobs})
        events = {j.job_id: events_of(raw, j.job_id)[0] for j in jobs}
    stats = sim.stats()
    for job in jobs:
        assert_unknown(events[job.job_id])
        assert job.starts(stats) == 1


def test_a_worker_stopped_gracefully_during_its_start_calls_hands_over_without_a_second_start(system: System) -> None:
    """HELD. SIGTERM while the start calls are at Cekura (answers within the call limit): the calls finish and are
    recorded, the stopping worker hands its messages back, worker B polls the jobs to the end. One start each."""
    server, sim, jobs = _system_jobs(system, "sigterm")
    sim.set_faults(latency_ms=1200)
    # A call limit of 4 s (half the lease): a busy machine can't turn a 1.2 s answer into a timed-out start.
    env = system.worker_env(server, sim, **{**KILL_ENV, "CEKURA_LEASE_S": "8"})
    a = system.worker(env, processes=1, threads=4)
    client = system.client(server)
    submit(client, jobs, deadline_s=120)
    system.wait_for(lambda: all(j.starts(sim.stats()) == 1 for j in jobs), timeout=30, what="every start at Cekura")
    os.killpg(a.pid, signal.SIGTERM)
    system.wait_for(lambda: a.popen.poll() is not None, timeout=30, what="A to stop")
    sim.set_faults(latency_ms=0)
    system.worker(env, processes=1, threads=4)
    with server.client() as raw:
        finished = system.wait_all_finished(raw, {j.job_id for j in jobs}, timeout=60)
        time.sleep(0.5)
        system.assert_exactly_one_event_each(raw, {j.job_id for j in jobs})
    stats = sim.stats()
    for job in jobs:
        assert finished[job.job_id]["status"] == "completed", finished[job.job_id]
        assert job.starts(stats) == 1


@pytest.mark.parametrize("down_s", [0.3, 4.0])
def test_a_redis_crash_while_starts_are_in_flight_makes_no_second_start(system: System, down_s: float) -> None:
    """HELD. Redis (AOF, fsync always) is SIGKILLed while the start calls are at Cekura and comes back `down_s`
    later: briefly (the advance is retried by the client and the jobs complete) or past the client's retries (the
    advance fails, the jobs are taken up by the reconciler and fail "outcome unknown"). Never a second start."""
    server = system.redis(persistent=True)
    sim = system.simulator()
    jobs = one_of_each(f"redis-crash-{int(down_s * 10)}")
    sim.set_faults(latency_ms=1200)
    env = system.worker_env(server, sim, **KILL_ENV)
    system.worker(env, processes=1, threads=4)
    client = system.client(server)
    submit(client, jobs, deadline_s=120)
    system.wait_for(lambda: all(j.starts(sim.stats()) == 1 for j in jobs), timeout=30, what="every start at Cekura")
    server.kill()
    time.sleep(down_s)
    server.start()
    sim.set_faults(latency_ms=0)
    with server.client() as raw:
        finished = system.wait_all_finished(raw, {j.job_id for j in jobs}, timeout=60)
        time.sleep(1.0)
        system.assert_exactly_one_event_each(raw, {j.job_id for j in jobs})
    stats = sim.stats()
    for job in jobs:
        event = finished[job.job_id]
        if event["status"] != "completed":
            assert_unknown(event)
        assert job.starts(stats) == 1


class LossyRedisProxy:
    """A TCP proxy in front of Redis that, once, forwards a command matching `needles` to Redis and then closes the
    client's connection instead of forwarding the reply: Redis ran the command, the client never hears of it.

    With `stall`, the link then stays down (nothing more is forwarded, on any connection, new or old) until
    `release()`: a partition between one worker and Redis while the rest of the fleet carries on."""

    def __init__(self, upstream_port: int, needles: tuple[bytes, ...], *, stall: bool = False) -> None:
        self.upstream_port = upstream_port
        self.needles = needles
        self.stall = stall
        self.fired = 0
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = int(self.listener.getsockname()[1])
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self) -> None:
        self.released.set()

    def _hold(self) -> None:
        if self.stall and self.fired:
            self.released.wait(30)

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            drop = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, drop), daemon=True).start()
            threading.Thread(target=self._down, args=(client, upstream, drop), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, drop: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while chunk := client.recv(65536):
                self._hold()
                if all(needle in chunk for needle in self.needles):
                    with self.lock:
                        if not self.fired:
                            self.fired += 1
                            drop.set()
                upstream.sendall(chunk)
        self._close(client, upstream)

    def _down(self, client: socket.socket, upstream: socket.socket, drop: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while chunk := upstream.recv(65536):
                if drop.is_set():
                    break  # the reply to the matched command: swallowed
                client.sendall(chunk)
        self._close(client, upstream)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.closed = True
        self.released.set()
        self.listener.close()


def test_a_start_whose_recording_reply_is_lost_on_the_network_still_completes(system: System) -> None:
    """BREAK (system twin of the lost-advance test): real worker processes reach Redis through a proxy that loses the
    reply to the first start `advance` (Redis ran it). The job's evaluator run is then cancelled by its own worker
    (`duplicate_start_cancelled` in the log, an end_calls at Cekura) and the job ends `cancelled`."""
    server = system.redis()
    sim = system.simulator()
    advance_sha = hashlib.sha1(scripts.source("advance").encode()).hexdigest().encode()
    with server.client() as raw:
        raw.script_load(scripts.source("advance"))  # so the lost reply is a run's, not a NOSCRIPT's
    proxy = LossyRedisProxy(server.port, (b"EVALSHA", advance_sha, b"$5\r\nstart\r\n"))
    try:
        env = system.worker_env(server, sim)
        env["REDIS_URL"] = f"redis://127.0.0.1:{proxy.port}/0"
        run = system.worker(env, processes=1, threads=2)
        client = system.client(server)
        job = make_job("evaluator.run", "proxy-lost-advance")
        submit(client, [job], deadline_s=120)
        with server.client() as raw:
            finished = system.wait_all_finished(raw, {job.job_id}, timeout=60)
            system.assert_exactly_one_event_each(raw, {job.job_id})
        assert proxy.fired == 1, "the proxy never saw the start's advance"
        stats = sim.stats()
        assert job.starts(stats) == 1
        assert finished[job.job_id]["status"] == "completed", (
            f"{finished[job.job_id]['status']}: {finished[job.job_id]['error']}; "
            f"duplicate_start_cancelled logged {run.count('duplicate_start_cancelled')}x; routes {stats['by_route']}"
        )
    finally:
        proxy.close()


def test_two_workers_under_mixed_faults_and_a_kill_never_start_twice(system: System) -> None:
    """HELD. Two worker processes (one SIGKILLed midway; the supervisor replaces it), random drops, hangs past the
    call limit, 5xx and 429 on every route. Every job ends exactly once; each non-repeatable job either completes
    or fails "outcome unknown"; no key is started twice."""
    server = system.redis()
    sim = system.simulator("--duration", "0.5", "--seed", "7")
    sim.set_faults(drop_rate=0.08, hang_rate=0.05, hang_s=3.0, error_rate=0.08, rate_429=0.08, retry_after_s=0.5)
    env = system.worker_env(server, sim, **KILL_ENV)
    run = system.worker(env, processes=2, threads=4)
    client = system.client(server)
    jobs = [make_job(kind, f"mixed-{i:02d}-{kind.replace('.', '-')}") for i in range(6) for kind in NON_REPEATABLE]
    submit(client, jobs, deadline_s=120)
    time.sleep(1.0)
    pids = run.worker_pids()
    assert pids
    os.kill(pids[0], signal.SIGKILL)
    time.sleep(1.5)
    sim.set_faults(drop_rate=0.0, hang_rate=0.0, error_rate=0.0, rate_429=0.0)
    with server.client() as raw:
        finished = system.wait_all_finished(raw, {j.job_id for j in jobs}, timeout=60, worker=run)
        time.sleep(1.0)
        system.assert_exactly_one_event_each(raw, {j.job_id for j in jobs})
    stats = sim.stats()
    assert_started_at_most_once(jobs, stats)
    unexpected = {}
    for job in jobs:
        event = finished[job.job_id]
        if event["status"] == "completed":
            assert job.starts(stats) == 1, job
        elif not (event["status"] == "failed" and event["error"].startswith(UNKNOWN_START)):
            unexpected[job.job_id] = (event["status"], event["error"][:120])
    assert not unexpected, unexpected


def test_a_retry_record_replayed_after_a_partition_does_not_start_a_second_operation(system: System) -> None:
    """BREAK: a DUPLICATE START across real processes (system twin of the replayed-retry test). Worker A reaches
    Redis through a proxy, worker B directly. A's start is answered 429 (certainly unsent), so A records a retry
    (`advance`: job back to `queued`, `start_sent` cleared, retry message M). Redis runs it; A's link then fails
    before the reply and stays down (a partition). After the cooldown B takes M and starts the generation at
    Cekura. The link heals; A's Redis client re-sends the same `advance`, which advance.lua accepts again because
    the job is `starting` (B's claim): `start_sent` is cleared and M requeued under B's in-flight call, and the next
    claim sends the start again."""
    server = system.redis()
    sim = system.simulator("--latency-ms", "1200")
    advance_sha = hashlib.sha1(scripts.source("advance").encode()).hexdigest().encode()
    with server.client() as raw:
        raw.script_load(scripts.source("advance"))
    proxy = LossyRedisProxy(server.port, (b"EVALSHA", advance_sha, b"$5\r\nstart\r\n"), stall=True)
    try:
        env_b = system.worker_env(server, sim, **KILL_ENV)
        env_a = {**env_b, "REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0"}
        sim.set_faults(rate_429=1.0, retry_after_s=1.0)
        system.worker(env_a, processes=1, threads=2)  # A
        client = system.client(server)
        job = make_job("scenario.generate", "partitioned-retry")
        submit(client, [job], deadline_s=120)
        system.wait_for(lambda: proxy.fired == 1, timeout=30, what="A to record its retry after the 429")
        sim.set_faults(rate_429=0.0)
        system.worker(env_b, processes=1, threads=2)  # B
        system.wait_for(lambda: job.starts(sim.stats()) >= 1, timeout=30, what="B to send the start")
        proxy.release()  # the partition heals while B's start is at Cekura
        with server.client() as raw:
            system.wait_all_finished(raw, {job.job_id}, timeout=60)
            time.sleep(2.0)  # a second start's answer comes back now
            system.assert_exactly_one_event_each(raw, {job.job_id})
        starts = job.starts(sim.stats())
        assert starts == 1, f"{job.kind} was started {starts} times at Cekura"
    finally:
        proxy.close()
