"""Adversarial reproductions against the deadline guarantee (README "Guarantees" / "Cancellation and deadlines"):

    Every job ends by its deadline (counted on the Redis server's clock from submission), give or take about a
    second: no retry, rate-limit wait, 429 cooldown, reconcile re-send, lease or slow/trickling Cekura answer
    carries it past; and host clock error changes nothing.

Each test runs real processes (a private redis-server, `cekura-worker run`) against a tiny scripted Cekura stand-in
served from this test (so answers can trickle, stall or carry any Retry-After), and asserts the guarantee; a test
fails while the defect it reproduces exists. Worker settings are the production defaults where the timing matters
(lease 30 s, HTTP timeout 10 s, reconcile every 5 s, grace 30 s), since those are what the guarantee is promised for.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.system.conftest import System

#: How late past its deadline a job may end ("give or take about a second"), with a little scheduling slack.
TOLERANCE_MS = 1500

#: The production defaults of every timing setting that matters here (FAST_ENV shortens them for other tests).
DEFAULT_TIMING = {
    "CEKURA_LEASE_S": "30",
    "CEKURA_HTTP_TIMEOUT_S": "10",
    "CEKURA_RECONCILE_INTERVAL_S": "5",
    "CEKURA_RECONCILE_GRACE_S": "30",
    "CEKURA_IDLE_WAKE_MS": "1000",
}


# -- a scripted Cekura stand-in ---------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    agent_id: int
    progress_id: str
    at_ms: int  # epoch ms, this host's (real) clock: the redis-server here shares it


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # wait before answering at all
    trickle_s: float = 0.0  # then send the answer a byte at a time, this far apart


class FakeCekura:
    """A one-thread-per-connection HTTP/1.1 server whose every answer is chosen by `decide(request) -> Reply`."""

    def __init__(self, decide: Callable[[Request], Reply]) -> None:
        self.decide = decide
        self.requests: list[Request] = []
        self.api_key = "attack-key"
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()

    def calls(self, agent_id: int, method: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.agent_id == agent_id and (method is None or r.method == method)]

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                length = int(headers.get("content-length", "0") or 0)
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                parts = urlsplit(target)
                segs = [s for s in parts.path.split("/") if s]
                agent_id = int(segs[3]) if len(segs) > 3 and segs[3].isdigit() else 0
                progress_id = parse_qs(parts.query).get("progress_id", [""])[0]
                request = Request(method, parts.path, agent_id, progress_id, int(time.time() * 1000))
                with self._lock:
                    self.requests.append(request)
                reply = self.decide(request)
                payload = json.dumps(reply.body).encode()
                reason = {200: "OK", 429: "Too Many Requests"}.get(reply.status, "X")
                extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
                raw = (
                    f"HTTP/1.1 {reply.status} {reason}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n{extra}\r\n"
                ).encode() + payload
                if reply.delay_s:
                    self._stop.wait(reply.delay_s)
                if reply.trickle_s:
                    for i in range(len(raw)):
                        conn.sendall(raw[i : i + 1])
                        if self._stop.wait(reply.trickle_s):
                            return
                else:
                    conn.sendall(raw)
        except OSError:
            return
        finally:
            conn.close()


@pytest.fixture
def fake() -> Iterator[Callable[[Callable[[Request], Reply]], FakeCekura]]:
    servers: list[FakeCekura] = []

    def make(decide: Callable[[Request], Reply]) -> FakeCekura:
        server = FakeCekura(decide)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def started(request: Request) -> Reply:
    return Reply(body={"progress_id": f"p-{request.agent_id}"})


# -- helpers ----------------------------------------------------------------------------------------------------


def env_for(system: System, server: Any, cekura: FakeCekura, **extra: str) -> dict[str, str]:
    return {
        **system.worker_env(server, cekura),  # type: ignore[arg-type]  # only .url and .api_key are read
        "CEKURA_API_URL": cekura.url,
        "CEKURA_API_KEY": "attack-key",
        **DEFAULT_TIMING,
        **extra,
    }


def job(raw: Any, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.hgetall(f"cekura:job:{job_id}").items()}


def wait_finished(system: System, raw: Any, job_ids: list[str], timeout: float) -> dict[str, dict[str, str]]:
    system.wait_for(
        lambda: all(job(raw, j).get("state") == "finished" for j in job_ids), timeout=timeout, what="jobs to finish"
    )
    return {j: job(raw, j) for j in job_ids}


def lateness_ms(record: dict[str, str]) -> int:
    """How long after its deadline (both on the Redis server's clock) the job was finished."""
    return int(record["updated_ms"]) - int(record["deadline_ms"])


def assert_on_time(records: dict[str, dict[str, str]]) -> None:
    late = {j: (lateness_ms(r), r.get("status")) for j, r in records.items() if lateness_ms(r) > TOLERANCE_MS}
    assert not late, f"jobs ended past their deadline (ms late, status): {late}"


# -- 1. a trickling answer keeps a 1 s job alive until the reconciler happens by ---------------------------------


def test_trickling_start_answer_does_not_carry_job_past_deadline(system: System, fake: Any) -> None:
    """Sequence: job (deadline 1 s) -> start call -> Cekura trickles its answer a byte every 0.5 s (never hitting the
    10 s read timeout; the call's total limit is half the lease, 15 s). The claim holds a 30 s lease and the
    schedule entry sits at deadline + 1 s, so nothing notices the deadline until a reconcile pass (every 5 s +-20%)
    re-sends the start. Three jobs 1.7 s apart: at most one can be lucky with the reconciler's phase."""
    cekura = fake(lambda r: Reply(body={"progress_id": "p"}, trickle_s=0.5) if r.method == "POST" else Reply())
    server = system.redis()
    system.worker(env_for(system, server, cekura), processes=1, threads=4)
    client = system.client(server)
    ids = []
    for i in range(3):
        ids.append(client.submit("agent.auto_fetch", {"agent_id": 10 + i}, job_id=f"trickle-{i}", deadline_s=1))
        time.sleep(1.7)
    with server.client() as raw:
        records = wait_finished(system, raw, ids, timeout=30)
    assert all(r["status"] == "timed_out" for r in records.values()), records
    assert_on_time(records)


# -- 2. a worker paused (SIGSTOP) mid-call: the live worker times the job out only on its next reconcile pass -----


@pytest.mark.xfail(
    strict=True,
    reason=(
        "a documented bound: a job whose worker stalls mid-call is timed out by another worker's reconciler "
        "pass, up to CEKURA_RECONCILE_INTERVAL_S (+20% jitter) after its deadline + 1 s"
    ),
)
def test_paused_worker_holding_a_job_does_not_carry_it_past_deadline(system: System, fake: Any) -> None:
    """Sequence: worker A takes the job's start message and is SIGSTOPped while its call is in flight (30 s lease);
    worker B is healthy. Nothing is due for the job until deadline + 1 s in the schedule, and B only looks at the
    schedule every ~5 s, so the job ends up to ~6 s after its deadline."""
    cekura = fake(lambda r: Reply(delay_s=60) if r.method == "POST" else Reply(body={"status": "in_progress"}))
    server = system.redis()
    env = env_for(system, server, cekura)
    paused = system.worker(env, processes=1, threads=1)
    client = system.client(server)
    job_id = client.submit("agent.auto_fetch", {"agent_id": 21}, job_id="paused-0", deadline_s=3)
    system.wait_for(lambda: bool(cekura.calls(21, "POST")), timeout=10, what="the start call")
    os.killpg(paused.pid, signal.SIGSTOP)
    try:
        system.worker(env, processes=1, threads=4)
        with server.client() as raw:
            records = wait_finished(system, raw, [job_id], timeout=30)
    finally:
        os.killpg(paused.pid, signal.SIGCONT)
    assert records[job_id]["status"] == "timed_out", records
    assert_on_time(records)


# -- 3. a poll claimed by the fetch waits in the worker past the deadline, then still calls Cekura ----------------


@pytest.mark.xfail(
    strict=True,
    reason=(
        "Cekura is no longer called and the job no longer completes past its deadline (fixed); what remains "
        "is the documented bound: while every worker thread is busy, a job is timed out by the next free "
        "thread or reconciler pass"
    ),
)
def test_prefetched_poll_does_not_call_cekura_or_finish_past_deadline(system: System, fake: Any) -> None:
    """Sequence (1 process x 1 thread, prefetch 2): job V (deadline 3 s) polls `in_progress` every 0.3 s; job B's
    progress call takes 6 s from t = 1 s. While the one thread is in B's call, the consumer fetches V's next poll
    *and claims it* (fetch.lua, lease 30 s). V's deadline passes. When the thread frees up (t ~ 7 s), `poll` uses the
    fetched claim because it is younger than a quarter of the lease (7.5 s) -- the deadline is not checked again --
    calls Cekura for V after its deadline, and V ends `completed` ~4 s past its deadline."""
    t0 = time.time()

    def decide(r: Request) -> Reply:
        if r.method == "POST":
            return started(r)
        if r.agent_id == 31:  # the blocker: slow from t = 1 s on
            return Reply(body={"status": "in_progress"}, delay_s=6 if time.time() - t0 > 1 else 0)
        # the victim: still running until its deadline (3 s) has passed, done after that
        return Reply(body={"status": "completed" if time.time() - t0 > 3.5 else "in_progress"})

    cekura = fake(decide)
    server = system.redis()
    env = env_for(system, server, cekura, CEKURA_POLL_INITIAL_S="0.3", CEKURA_POLL_MAX_S="0.3", CEKURA_POLL_JITTER="0")
    system.worker(env, processes=1, threads=1)
    client = system.client(server)
    t0 = time.time()
    victim = client.submit("agent.auto_fetch", {"agent_id": 30}, job_id="victim", deadline_s=3)
    blocker = client.submit("agent.auto_fetch", {"agent_id": 31}, job_id="blocker", deadline_s=60)
    with server.client() as raw:
        records = wait_finished(system, raw, [victim], timeout=30)
        deadline_ms = int(records[victim]["deadline_ms"])
        late_calls = [r.at_ms - deadline_ms for r in cekura.calls(30) if r.at_ms > deadline_ms]
        client.cancel(blocker)
    assert not late_calls, (
        f"Cekura was called for the job {late_calls} ms after its deadline; it ended "
        f"{records[victim]['status']} {lateness_ms(records[victim])} ms past it"
    )
    assert records[victim]["status"] == "timed_out", records[victim]
    assert_on_time(records)


# -- 4. host clock error: an HTTP-date Retry-After read against a host clock that is behind -----------------------


def test_http_date_retry_after_is_not_read_against_the_host_clock(system: System, fake: Any) -> None:
    """Sequence: the worker host's clock is 300 s behind Cekura's (and Redis's). Cekura answers the first start call
    429 with `Retry-After: <HTTP date 1 s from now>` (on its clock), then works. The worker measures that date
    against its own clock (backoff.parse_retry_after uses datetime.now) and sets a fleet-wide cooldown of ~301 s in
    Redis, so every job of the fleet waits for its deadline and times out; with a right clock the job completes in
    about a second. (clockshift/sitecustomize.py shifts time.time() only, not datetime.now(), so the same relative
    error is produced by running Cekura's clock 300 s ahead of this host's instead.)"""
    first = threading.Event()

    def decide(r: Request) -> Reply:
        if r.method == "POST" and not first.is_set():
            first.set()
            # A real server sends its own Date with it (RFC 9110 6.6.1): the same clock as its Retry-After.
            ahead = {"Retry-After": formatdate(time.time() + 300 + 1, usegmt=True)}
            ahead["Date"] = formatdate(time.time() + 300, usegmt=True)
            return Reply(429, {"detail": "throttled"}, ahead)
        if r.method == "POST":
            return started(r)
        return Reply(body={"status": "completed"})

    cekura = fake(decide)
    server = system.redis()
    env = env_for(system, server, cekura)
    system.worker(env, processes=1, threads=2)
    client = system.client(server)
    job_id = client.submit("agent.auto_fetch", {"agent_id": 41}, job_id="skewed-429", deadline_s=8)
    with server.client() as raw:
        records = wait_finished(system, raw, [job_id], timeout=30)
        cooldown_left_ms = int(raw.pttl("cekura:ratelimit:cooldown"))
    assert cooldown_left_ms < 5000, f"a 1 s Retry-After left a fleet-wide cooldown of {cooldown_left_ms} ms"
    assert records[job_id]["status"] == "completed", records[job_id]


# -- attacks that held (kept as regression guards) --------------------------------------------------------------


def test_rate_limit_and_429_cooldown_waits_stop_at_the_deadline(system: System, fake: Any) -> None:
    """Fleet rate limit 1/s (burst 1) plus a 429 with a 600 s Retry-After: 12 jobs with 1-2 s deadlines all end on
    time (the claim caps every wait at the deadline and re-sends the message for it)."""
    first = threading.Event()

    def decide(r: Request) -> Reply:
        if r.method == "POST" and not first.is_set():
            first.set()
            return Reply(429, {"detail": "throttled"}, {"Retry-After": "600"})
        return started(r) if r.method == "POST" else Reply(body={"status": "in_progress"})

    cekura = fake(decide)
    server = system.redis()
    env = env_for(system, server, cekura, CEKURA_RATE_LIMIT_RPS="1", CEKURA_RATE_LIMIT_BURST="1")
    system.worker(env, processes=2, threads=4)
    client = system.client(server)
    ids = [
        client.submit("agent.auto_fetch", {"agent_id": 50 + i}, job_id=f"rl-{i}", deadline_s=1 + (i % 2))
        for i in range(12)
    ]
    with server.client() as raw:
        records = wait_finished(system, raw, ids, timeout=30)
    assert_on_time(records)


# -- 5. CEKURA_IDLE_WAKE_MS at its maximum: idle workers don't see a submitted job until the reconciler does --------


@pytest.mark.xfail(
    strict=True,
    reason=(
        "the documented cost of CEKURA_IDLE_WAKE_MS: an idle consumer looks for messages pushed by another "
        "process only once per idle wake (60 s here)"
    ),
)
def test_idle_workers_pick_up_a_new_job_before_its_deadline(system: System, fake: Any) -> None:
    """Sequence: CEKURA_IDLE_WAKE_MS=60000 (allowed: le 60 000), an idle fleet (nothing delayed, so each consumer
    sleeps the whole idle timeout). A producer submits a job (deadline 5 s); its start message is RPUSHed onto the
    queue, which wakes no consumer in another process. The job only moves when a reconcile pass finds it overdue at
    deadline + 1 s and re-sends its start (in the reconciler's own process, which wakes), and then it is expired:
    a job Cekura completes at once ends `timed_out` without ever having been started. (README's tuning table lists
    "latency of immediate messages submitted by another process" as this setting's cost; it is not bounded by the
    job's deadline, which is what this test checks.)"""
    cekura = fake(lambda r: started(r) if r.method == "POST" else Reply(body={"status": "completed"}))
    server = system.redis()
    system.worker(env_for(system, server, cekura, CEKURA_IDLE_WAKE_MS="60000"), processes=2, threads=2)
    # Both consumers have looked for messages once (each fetch stamps its process's heartbeat), found none and gone
    # idle: only then is the job submitted, so that neither picks it up on its first look.
    with server.client() as raw:
        system.wait_for(
            lambda: raw.zcard("cekura:dramatiq:__heartbeats__") >= 2, timeout=30, what="both consumers to go idle"
        )
    client = system.client(server)
    job_id = client.submit("agent.auto_fetch", {"agent_id": 60}, job_id="idle-0", deadline_s=5)
    with server.client() as raw:
        records = wait_finished(system, raw, [job_id], timeout=70)
    assert_on_time(records)
    assert records[job_id]["status"] == "completed", records[job_id]
