"""The guarantees at their edges, each reproducing a way they once broke (issue: "eight ways to lose a job, leak the
key, break a deadline or call Cekura twice"), against a real worker, real Redis and real HTTP.

Where the simulator can't misbehave in the needed way, a small hostile Cekura (`HostileCekura`) answers instead:
an answer that trickles in a byte at a time, or one nested thousands of levels deep.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import dramatiq
import pytest

from actors import names
from config.settings import Settings, load_settings
from simulator import SimulatorHandle
from tests.support import pending_messages, wait_for
from worker.client import Client
from worker.runtime.app import Runtime, bind_actors, setup
from worker.runtime.connection import server_ms
from worker.runtime.reconciler import reconcile_once
from worker.store.jobs import Phase


def _iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _elapsed(event: dict[str, str]) -> float:
    return (_iso(event["finished_at"]) - _iso(event["submitted_at"])).total_seconds()


def _events(client: Client, job_id: str) -> list[dict[str, str]]:
    return [e for e in client.results() if e["job_id"] == job_id]


def _route(sim: SimulatorHandle, route: str) -> int:
    return int(sim.stats()["by_route"].get(route, 0))


def _idle(rt: Runtime) -> bool:
    """No message is queued, delayed or being processed: nothing is left that could call Cekura again."""
    return pending_messages(rt.redis, rt.broker.namespace, rt.settings.cekura_queue) == 0


# -- 1. key namespaces --------------------------------------------------------------------------------------------


def test_a_job_id_ending_in_secret_is_its_own_job_and_keeps_its_record(
    client: Client, worker: dramatiq.Worker, sim: SimulatorHandle
) -> None:
    # Once, `a:secret`'s record was the secret key of job `a`, deleted when `a` started.
    client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="a:secret")
    client.submit("agent.auto_fetch", {"agent_id": 6}, job_id="a")
    assert client.wait("a:secret", timeout=15)["status"] == "completed"
    assert client.wait("a", timeout=15)["status"] == "completed"
    assert len(_events(client, "a:secret")) == len(_events(client, "a")) == 1


def test_a_provider_key_never_lands_in_another_jobs_record(
    client: Client, worker: dramatiq.Worker, rt: Runtime, sim: SimulatorHandle
) -> None:
    sim.configure(duration_s=1.0)
    client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="c:secret")
    client.submit(
        "agent.toggle_mock_tools", {"agent_id": 7, "enabled": True, "api_key": "pk-provider-0001"}, job_id="c"
    )
    assert rt.redis.type(rt.store.job_key("c:secret")) == b"hash"
    assert (
        b"pk-provider-0001"
        not in json.dumps(
            {k.decode(): v.decode() for k, v in rt.redis.hgetall(rt.store.job_key("c:secret")).items()}
        ).encode()
    )
    assert client.wait("c", timeout=15)["status"] == "completed"
    assert client.wait("c:secret", timeout=15)["status"] == "completed"
    assert reconcile_once(rt) >= 0  # no WRONGTYPE from the schedule


def test_a_foreign_key_where_a_job_would_live_is_skipped_by_every_fleet_wide_script(
    client: Client, worker: dramatiq.Worker, rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    # Another program's string under the job namespace, and on the schedule: the reconciler's pass skips it and
    # still re-sends the real overdue job next to it; a poll message naming it is dropped by the fetch's claim.
    rt.redis.set(rt.store.job_key("foreign"), "not a job")
    rt.redis.zadd(rt.store.schedule_key, {"foreign": 0})
    job_id = client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="next-to-foreign")
    wait_for(lambda: client.status(job_id)["state"] == "finished", timeout=15, what="the real job to finish")
    from actors.jobs import poll

    def logged(event: str) -> bool:
        return any(isinstance(r.msg, dict) and r.msg.get("event") == event for r in caplog.records)

    poll.send("foreign", 1)
    wait_for(lambda: logged("job_record_unreadable"), what="the poll to be dropped")
    reconcile_once(rt)
    assert logged("schedule_entry_skipped")
    client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="after-foreign")
    assert client.wait("after-foreign", timeout=15)["status"] == "completed"
    assert rt.redis.zscore(rt.store.schedule_key, "foreign") is None  # dropped from the schedule, logged
    assert rt.redis.get(rt.store.job_key("foreign")) == b"not a job"  # and never touched


def test_secrets_live_apart_from_job_records(rt: Runtime) -> None:
    assert rt.store.secret_key("x") == "cekura:secret:x"
    assert not rt.store.secret_key("x").startswith(rt.store.job_prefix)
    assert not rt.store.job_key("x:secret").startswith(rt.store.secret_prefix)


# -- 4. one deadline rule -----------------------------------------------------------------------------------------

RATE_1 = {"cekura_rate_limit_rps": 1.0, "cekura_rate_limit_burst": 1}


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    overrides = getattr(request, "param", {})
    return load_settings(**{**settings.model_dump(), **overrides}) if overrides else settings


@pytest.mark.parametrize("settings", [RATE_1], indirect=True)
def test_rate_limit_waits_never_outlast_a_jobs_deadline(
    client: Client, worker: dramatiq.Worker, rt: Runtime, sim: SimulatorHandle
) -> None:
    # At one call a second, 20 jobs with a 4 s deadline can't all be served; the ones that can't end at their
    # deadline (not up to 23 s late, as before), and none is started at Cekura and then left unpolled.
    sim.configure(duration_s=0.2)
    ids = [client.submit("agent.auto_fetch", {"agent_id": 5}, job_id=f"rl-{i}", deadline_s=4) for i in range(20)]
    events = [client.wait(job_id, timeout=30) for job_id in ids]
    late = [(e["job_id"], round(_elapsed(e), 2)) for e in events if _elapsed(e) > 4 + 1.5]
    assert not late, late
    outcomes = {e["status"] for e in events}
    assert outcomes <= {"completed", "timed_out"} and "timed_out" in outcomes
    started = [e for e in events if e["progress_id"]]
    assert all(int(e["polls"]) >= 1 or e["status"] == "timed_out" for e in started)
    # A start claimed just before the deadline may reach Cekura while its job times out (README: a job past its
    # deadline times out even while a call holds its claim, and that call's answer is ignored); every other start
    # belongs to a job that recorded it, and none is made twice.
    in_flight = [e for e in events if not e["progress_id"] and (rt.store.get(e["job_id"]) or {}).get("start_claim")]
    assert all(e["status"] == "timed_out" for e in in_flight)
    assert len(started) <= _route(sim, "auto-fetch 202") <= len(started) + len(in_flight)


def test_a_429_cooldown_longer_than_the_deadline_ends_the_job_at_its_deadline(
    client: Client, worker: dramatiq.Worker, sim: SimulatorHandle
) -> None:
    sim.set_faults(rate_429=1.0, retry_after_s=25)
    job_id = client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="cooldown-deadline", deadline_s=3)
    event = client.wait(job_id, timeout=20)
    assert event["status"] == "timed_out"
    assert 3 <= _elapsed(event) < 3 + 1.5, _elapsed(event)


def test_retry_delays_are_capped_at_the_deadline(
    client: Client, worker: dramatiq.Worker, rt: Runtime, sim: SimulatorHandle
) -> None:
    sim.set_faults(error_rate=1.0)  # every call a 5xx: retries back off towards CEKURA_RETRY_MAX_S
    settings = load_settings(**{**rt.settings.model_dump(), "cekura_retry_initial_s": 5.0, "cekura_retry_max_s": 60})
    setup(settings)
    job_id = client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="retry-deadline", deadline_s=2)
    event = client.wait(job_id, timeout=20)
    assert event["status"] == "timed_out"
    assert _elapsed(event) < 2 + 1.5, _elapsed(event)


def test_a_start_call_in_flight_at_the_deadline_does_not_hold_the_job_past_it(rt: Runtime) -> None:
    # A job whose start lease is live when its deadline passes is `expired` for the next message, not `stale`.
    created, _ = rt.store.submit("lease-at-deadline", "agent.auto_fetch", {"agent_id": 5}, {}, 3.0, {})
    assert created
    assert rt.store.claim("lease-at-deadline", Phase.START, 0).verdict == "ok"  # lease held (5 s)
    # Before the deadline the lease holds. Asked again until the deadline has passed (an `expired` or `stale` claim
    # writes nothing), the answer turns `expired` while the lease still has 2 s to run: never `stale` after it.
    verdicts = [rt.store.claim("lease-at-deadline", Phase.START, 0).verdict]
    assert verdicts == ["stale"]
    deadline_ms = int(rt.redis.hget(rt.store.job_key("lease-at-deadline"), "deadline_ms") or 0)
    lease_ms = int(rt.redis.hget(rt.store.job_key("lease-at-deadline"), "lease") or 0)
    assert lease_ms > deadline_ms

    def claimed_after_the_deadline() -> bool:
        now_ms = server_ms(rt.redis)
        verdicts.append(rt.store.claim("lease-at-deadline", Phase.START, 0).verdict)
        return now_ms >= deadline_ms

    wait_for(claimed_after_the_deadline, interval=0.05, what="a claim after the deadline")
    assert verdicts[-1] == "expired" and set(verdicts) <= {"stale", "expired"}, verdicts
    score = rt.redis.zscore(rt.store.schedule_key, "lease-at-deadline")
    deadline = int(rt.redis.hget(rt.store.job_key("lease-at-deadline"), "deadline_ms") or 0)
    assert score is not None and score <= deadline + 1000  # the reconciler's view is bounded by the deadline too


# -- 5 and 6. hostile answers -------------------------------------------------------------------------------------


class HostileCekura:
    """A Cekura that answers start calls normally and misbehaves as told: `trickle` sends its start answer one
    byte every `byte_s`; `nested` answers progress with JSON nested `depth` levels deep. Counts start calls."""

    def __init__(self, mode: str, *, byte_s: float = 0.3, depth: int = 100_000) -> None:
        self.mode, self.byte_s, self.depth = mode, byte_s, depth
        self.starts = 0
        self.progress = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by stop()
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                while not self._stop.is_set():
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        head += chunk
                    lines = head.split(b"\r\n")
                    length = next((int(x.split(b":")[1]) for x in lines if x.lower().startswith(b"content-length")), 0)
                    body = head.split(b"\r\n\r\n", 1)[1]
                    while len(body) < length:
                        body += conn.recv(65536)
                    self._answer(conn, lines[0])
            except OSError:
                return

    def _answer(self, conn: socket.socket, request_line: bytes) -> None:
        if request_line.startswith(b"POST"):
            self.starts += 1
            payload = json.dumps({"progress_id": f"p-{self.starts}"}).encode()
        else:
            self.progress += 1
            if self.mode == "nested":
                payload = b"[" * self.depth + b"]" * self.depth
                payload = b'{"status": "in_progress", "result": ' + payload + b"}"
            else:
                payload = b'{"status": "completed"}'
        response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(payload),
            payload,
        )
        if self.mode == "trickle" and request_line.startswith(b"POST"):
            for i in range(len(response)):
                if self._stop.is_set():
                    return
                conn.sendall(response[i : i + 1])
                time.sleep(self.byte_s)
        else:
            conn.sendall(response)

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()


@pytest.fixture
def hostile(request: pytest.FixtureRequest) -> Iterator[HostileCekura]:
    server = HostileCekura(**request.param)
    yield server
    server.stop()


def _hostile_runtime(settings: Settings, server: HostileCekura, **overrides: Any) -> Runtime:
    values = {**settings.model_dump(), "cekura_api_url": server.url, **overrides}
    rt = setup(load_settings(**values))
    bind_actors()
    return rt


@pytest.mark.parametrize("hostile", [{"mode": "trickle", "byte_s": 0.3}], indirect=True)
def test_an_answer_that_trickles_in_is_cut_off_before_the_lease_ends_and_the_start_is_never_repeated(
    settings: Settings, hostile: HostileCekura
) -> None:
    # Before: a 1 s timeout per read and a 2 s lease let a trickling start answer outlive the lease, and the
    # reconciler began a second, third and fourth Cekura operation for the same job.
    rt = _hostile_runtime(
        settings,
        hostile,
        cekura_http_timeout_s=1.0,
        cekura_lease_s=2.0,
        cekura_reconcile_grace_s=0.5,
        cekura_reconcile_interval_s=0.2,
    )
    worker = dramatiq.Worker(rt.broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        with Client(rt.settings, client=rt.redis, broker=rt.broker) as client:
            from worker.runtime.reconciler import Reconciler

            reconciler = Reconciler(rt)
            reconciler.start()
            try:
                job_id = client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="trickle", deadline_s=6)
                event = client.wait(job_id, timeout=20)
            finally:
                reconciler.stop()
                reconciler.join(5)
        # Each start call is cut off after half the lease (1 s) and retried as a transient failure; at no time do two
        # calls overlap, so Cekura never sees a second start while the first might still be answered.
        assert event["status"] in ("timed_out", "failed")
        assert "timed out" in event["error"] or "deadline" in event["error"]
        assert hostile.starts <= 6 / 1.0 + 1
    finally:
        worker.stop(timeout=10_000)


@pytest.mark.parametrize("hostile", [{"mode": "trickle", "byte_s": 0.3}], indirect=True)
def test_no_two_start_calls_for_one_job_are_ever_in_flight_at_once(settings: Settings, hostile: HostileCekura) -> None:
    rt = _hostile_runtime(
        settings, hostile, cekura_http_timeout_s=1.0, cekura_lease_s=2.0, cekura_reconcile_grace_s=0.5
    )
    overlaps: list[int] = []
    in_flight = [0]
    original = rt.cekura.start

    def counting_start(*args: Any, **kwargs: Any) -> Any:
        in_flight[0] += 1
        overlaps.append(in_flight[0])
        try:
            return original(*args, **kwargs)
        finally:
            in_flight[0] -= 1

    rt.cekura.start = counting_start  # type: ignore[method-assign]
    worker = dramatiq.Worker(rt.broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        with Client(rt.settings, client=rt.redis, broker=rt.broker) as client:
            job_id = client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="trickle-2", deadline_s=5)
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                reconcile_once(rt)  # as eager as a reconciler can be
                time.sleep(0.2)
            client.wait(job_id, timeout=10)
        assert overlaps and max(overlaps) == 1, overlaps
    finally:
        worker.stop(timeout=10_000)


@pytest.mark.parametrize("hostile", [{"mode": "nested", "depth": 100_000}], indirect=True)
def test_a_pathologically_nested_answer_fails_the_job_once_with_the_reason(
    settings: Settings, hostile: HostileCekura
) -> None:
    # Before: RecursionError escaped, every Dramatiq retry was discarded as stale, and the job started again at
    # Cekura about once a minute until it timed out.
    rt = _hostile_runtime(settings, hostile)
    worker = dramatiq.Worker(rt.broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        with Client(rt.settings, client=rt.redis, broker=rt.broker) as client:
            job_id = client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="nested", deadline_s=30)
            event = client.wait(job_id, timeout=15)
            wait_for(lambda: _idle(rt), what="every message to be handled")
            assert event["status"] == "failed"
            assert "invalid response" in event["error"], event["error"]
            assert hostile.starts == 1
            assert hostile.progress == 1
            assert len(_events(client, job_id)) == 1
    finally:
        worker.stop(timeout=10_000)


def test_an_unexpected_exception_while_handling_a_step_fails_the_job_once(
    client: Client, worker: dramatiq.Worker, rt: Runtime, sim: SimulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from actors.kinds import KINDS

    kind = KINDS["agent.auto_fetch"]

    def boom(_status: str) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(type(kind), "outcome", lambda self, status: boom(status))
    job_id = client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="boom")
    event = client.wait(job_id, timeout=15)
    assert event["status"] == "failed"
    assert event["error"] == "internal error while handling the poll step (RecursionError)"
    wait_for(lambda: _idle(rt), what="every message to be handled")  # nothing left that could start it again
    assert _route(sim, "auto-fetch 202") == 1
    assert len(_events(client, job_id)) == 1


# -- smaller ones -------------------------------------------------------------------------------------------------


def test_a_remote_cancel_is_written_with_the_cancel_itself(client: Client, rt: Runtime, sim: SimulatorHandle) -> None:
    # No worker runs: the cancel_remote message must already sit on the queue when the cancel returns, so a
    # failure to enqueue it afterwards can't lose it.
    from worker.store.jobs import RemoteCancel

    created, _ = rt.store.submit("rc-1", "scenario.agent", {"user_message": "x"}, {}, 60, {})
    assert created
    assert rt.store.claim("rc-1", Phase.START, 0).verdict == "ok"
    rt.store.advance("rc-1", Phase.START, 0, next_state="polling", delay_ms=60_000, fields={"session_id": 42})
    remote = RemoteCancel(
        kinds=frozenset({"scenario.agent"}),
        queue_name=rt.settings.cekura_queue,
        namespace=rt.broker.namespace,
        actor_name=names.CANCEL_REMOTE,
    )
    done = rt.store.finish("rc-1", "any", 0, {"status": "cancelled"}, remote_cancel=remote, message_id="m-1")
    assert done.verdict == "ok" and done.remote_cancel
    queue = f"{rt.broker.namespace}:{rt.settings.cekura_queue}"
    (redis_id,) = rt.redis.lrange(queue, 0, -1)
    message = dramatiq.Message.decode(rt.redis.hget(f"{queue}.msgs", redis_id))
    assert message.actor_name == names.CANCEL_REMOTE
    assert list(message.args) == ["rc-1", "scenario.agent", 42, ""]
    assert message.options["redis_message_id"] == redis_id.decode()
    # a second cancel finds the job finished and writes nothing
    again = rt.store.finish("rc-1", "any", 0, {"status": "cancelled"}, remote_cancel=remote, message_id="m-2")
    assert again.verdict == "done" and rt.redis.llen(queue) == 1


def test_timestamps_are_taken_from_the_redis_servers_clock(rt: Runtime) -> None:
    seconds, _ = rt.redis.time()
    rt.store.submit("clock-1", "agent.auto_fetch", {"agent_id": 5}, {}, 60, {})
    record = rt.store.get("clock-1")
    assert record is not None
    submitted = _iso(record["submitted_at"]).timestamp()
    assert abs(submitted - int(record["submitted_ms"]) / 1000) < 0.001
    assert abs(submitted - int(seconds)) < 2


@pytest.mark.parametrize(
    "ms",
    [0, 1, 951782400000, 1709164800000, 1735689599999, 4102444800000, 1795996785599, 32503680000123],
)
def test_the_lua_iso_formatter_agrees_with_python(rt: Runtime, ms: int) -> None:
    from worker.store import scripts
    from worker.store.jobs import iso_from_ms

    prelude = (Path(scripts.__file__).parent / "_now.lua").read_text()

    script = prelude + "return iso(tonumber(ARGV[1]))"
    assert rt.redis.eval(script, 0, ms).decode() == iso_from_ms(ms)
