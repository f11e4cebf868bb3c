"""Attacks on the traced Cekura client since commit 8a1c6d9 split `CekuraClient._call` into `_exchange` and
`_answer` and `TracedCekuraClient` calls the halves itself (no `_read` override, no thread-local).

The guarantee attacked: every call span is correct (`http.response.status_code` whenever an answer came, none when
none did; `error.type` and an ERROR status on a failure; progress spans carry `cekura.poll.number` and
`cekura.status`) and carries no secret.

Cekura is `Wire`, a small real HTTP/1.1 server on loopback whose answers each test scripts by path, and which can
also misbehave on the wire: send a status line and headers and then drop the connection mid-body, or stall. Redis,
the worker's actors and HTTP client, the OTLP exporter and the OTLP receiver process are real (the `start` fixture
of tests/tracing/conftest.py, pointed at `Wire`).
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.tracing.conftest import API_KEY, OTLP_TEAM, PROVIDER_KEY, Service, find_leaks, json_reply, wait_job
from tests.tracing.test_attack_record_bounds import TOOLS, _spans_of, _tools, _violations


@dataclass
class Act:
    """One answer: `status`, `headers` and `body`; `cut` bytes of the body sent then the connection dropped (reset
    when `reset`), or `stall_s` seconds of silence before (`stall_before`) or after the headers."""

    status: int
    body: bytes = b"{}"
    headers: list[tuple[str, str]] = field(default_factory=lambda: [("Content-Type", "application/json")])
    cut: int | None = None
    reset: bool = False
    stall_s: float = 0.0
    stall_before: bool = False


def reply(status: int, value: Any, *headers: tuple[str, str]) -> Act:
    s, content_type, body = json_reply(status, value)
    return Act(s, body, [("Content-Type", content_type), *headers])


class Wire:
    """Answers each request by the first route whose pattern matches its path (the last act repeats; 404 if none)."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, list[Act], list[int]]] = []
        self.lock = threading.Lock()
        wire = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                act = wire.act(self.path)
                if act.stall_before:
                    time.sleep(act.stall_s)
                self.send_response(act.status)
                for name, value in act.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(act.body)))
                self.end_headers()
                if act.stall_s and not act.stall_before:
                    self.wfile.flush()
                    time.sleep(act.stall_s)
                if act.cut is None:
                    self.wfile.write(act.body)
                    return
                self.wfile.write(act.body[: act.cut])
                self.wfile.flush()
                if act.reset:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def on(self, pattern: str, *acts: Act) -> None:
        self.routes.append((pattern, list(acts), [0]))

    def act(self, path: str) -> Act:
        with self.lock:
            for pattern, acts, seen in self.routes:
                if re.search(pattern, urlsplit(path).path):
                    chosen = acts[min(seen[0], len(acts) - 1)]
                    seen[0] += 1
                    return chosen
        return Act(404, b'{"detail": "Not found."}')

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class _Shim:
    """What the `start` fixture reads of its `cekura` (the URL) and what the `cekura` fixture stops."""

    wire: Wire

    @property
    def url(self) -> str:
        return self.wire.url


@pytest.fixture
def wire() -> Iterator[Wire]:
    server = Wire()
    yield server
    server.stop()


@pytest.fixture
def cekura(wire: Wire) -> _Shim:  # overrides conftest's `cekura`: `start` points at `wire`
    return _Shim(wire)


def _calls(spans: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"].startswith(f"{method} ")]


#: An HTTP-date whose year no `datetime` holds: `parsedate_to_datetime` raises OverflowError, not ValueError.
OVERFLOWING_DATE = "Mon, 01 Jan 99999999999 00:00:00 GMT"


# -- BROKE ------------------------------------------------------------------------------------------------------


def test_an_answer_cut_off_mid_body_still_names_its_status(wire: Wire, start: Callable[..., Service]) -> None:
    """BROKE. Cekura (or a proxy) sends `HTTP/1.1 200` and its headers, then drops the connection before the body
    is complete (a reset, or a close short of Content-Length). The status line came: by OpenTelemetry's HTTP
    conventions `http.response.status_code` is required "if and only if one was received", and this is the same
    case as an answer refused for its size (status line read, body not), which names it. Before 8a1c6d9 the span
    had it (the `_read` override set `call.status` as soon as the answer's head was in); now `_exchange` raises
    `TransientError` with no status and `call.status` is never set (worker/tracing/calls.py, `progress` and
    `_call`: `call.status = response.status` runs only after `_exchange` returned; the client's
    `_exchange` (worker/cekura/client.py) drops `response.status` when it turns the network error into
    `TransientError`). The same goes for a 503 or 429 cut short, and for an answer that stalls after its head.
    Fails at 8a1c6d9, passes at efff92e; passes with the uncommitted fix in the working tree (`_exchange`'s
    `answered` parameter, which sets the `_Call`'s status as soon as `handle_request` returns)."""
    body = b'{"status": "in_progress", "pad": "' + b"x" * 4000 + b'"}'
    wire.on(r"/aiagents/1/tools/auto-fetch/$", reply(200, {"progress_id": "p-1"}))
    wire.on(r"/aiagents/1/tools/auto-fetch-progress/$", Act(200, body, cut=100, reset=True))
    wire.on(r"/aiagents/2/tools/auto-fetch/$", reply(200, {"progress_id": "p-2"}))
    wire.on(r"/aiagents/2/tools/auto-fetch-progress/$", Act(503, body, cut=100))
    service = start(cekura_max_consecutive_errors=1)
    events = {
        agent: wait_job(service.client, service.client.submit(TOOLS, _tools(agent), job_id=f"cut-{agent}"))
        for agent in (1, 2)
    }
    assert {e["status"] for e in events.values()} == {"failed"}, events
    for agent, status in ((1, 200), (2, 503)):
        (poll,) = _calls(_spans_of(service, events[agent]), "GET")
        assert poll["status"] == "ERROR" and poll["attributes"]["error.type"] == "TransientError", poll
        assert poll["attributes"].get("http.response.status_code") == status, (agent, poll["attributes"])


def test_a_429_with_an_overflowing_retry_after_date_is_a_rate_limit_with_an_error_span(
    wire: Wire, start: Callable[..., Service]
) -> None:
    """BROKE, fixed. A 429 whose `Retry-After` is an HTTP-date with an 11-digit year: `parse_retry_after`
    (worker/cekura/backoff.py) and `_relative_to_server_date` (client.py) caught `(TypeError, ValueError,
    IndexError)`, and `parsedate_to_datetime` raises `OverflowError` there, so `_answer` raised it instead of
    `RateLimited`: the job failed as an internal error instead of waiting out the rate limit, the start's span was
    exported as a success (status 429, no `error.type`, status UNSET), and the poll's not at all. Now the unreadable
    date is no date (the default wait), the job goes on, and each 429 call's span is an ERROR naming 429; a call that
    raises anything but a `CekuraError` would still get an ERROR span naming the exception's type."""
    limited = reply(429, {"detail": "slow down"}, ("Retry-After", OVERFLOWING_DATE))
    wire.on(r"/aiagents/1/tools/auto-fetch/$", limited, reply(200, {"progress_id": "p-1"}))
    wire.on(r"/aiagents/1/tools/auto-fetch-progress/$", reply(200, {"status": "completed"}))
    wire.on(r"/aiagents/2/tools/auto-fetch/$", reply(200, {"progress_id": "p-2"}))
    wire.on(r"/aiagents/2/tools/auto-fetch-progress/$", limited, reply(200, {"status": "completed"}))
    service = start(cekura_max_consecutive_errors=1)
    events = {
        agent: wait_job(service.client, service.client.submit(TOOLS, _tools(agent), job_id=f"ra-{agent}"), 60)
        for agent in (1, 2)
    }
    assert {agent: event["status"] for agent, event in events.items()} == {1: "completed", 2: "completed"}, events
    for agent, method in ((1, "POST"), (2, "GET")):
        first = min(_calls(_spans_of(service, events[agent]), method), key=lambda span: span["start_ns"])
        assert first["status"] == "ERROR", first
        assert first["attributes"]["http.response.status_code"] == 429
        assert first["attributes"]["error.type"] == "429"


# -- HELD -------------------------------------------------------------------------------------------------------


def test_error_statuses_of_every_call_name_their_status_type_and_mask_the_secrets(
    wire: Wire, start: Callable[..., Service]
) -> None:
    """HELD. A start refused 400 with a page echoing the API key, the provider key and the OTLP credential; a poll
    answered 401, 403, 404, 429 (Retry-After `1`, and an unreadable one), 500; a 2xx poll that is not JSON: each
    span carries the status, `error.type` (the status for >= 400, `RateLimited`'s 429, `PermanentError` for a 2xx
    that can't be used), an ERROR status, `cekura.poll.number` on polls, and no secret."""
    page = f"echo {API_KEY} {PROVIDER_KEY} {OTLP_TEAM} {API_KEY.upper()} ".encode()
    wire.on(r"/aiagents/1/tools/auto-fetch/$", Act(400, page, [("Content-Type", "text/plain")]))
    answers: dict[int, tuple[Act, str]] = {
        2: (Act(401, page), "401"),
        3: (Act(403, page), "403"),
        4: (Act(404, page), "404"),
        5: (reply(429, {"detail": API_KEY}, ("Retry-After", "1")), "429"),
        6: (reply(429, {"detail": PROVIDER_KEY}, ("Retry-After", "soon, " + PROVIDER_KEY)), "429"),
        7: (Act(500, page), "500"),
        8: (Act(200, b"<html>" + page), "PermanentError"),
    }
    for agent, (act, _) in answers.items():
        wire.on(rf"/aiagents/{agent}/tools/auto-fetch/$", reply(200, {"progress_id": f"p-{agent}"}))
        # A 429 neither counts as an error nor ends the job: the next poll's 400 does.
        wire.on(rf"/aiagents/{agent}/tools/auto-fetch-progress/$", act, Act(400, page))
    service = start(cekura_max_consecutive_errors=1)
    events = {
        agent: wait_job(service.client, service.client.submit(TOOLS, _tools(agent), job_id=f"err-{agent}"))
        for agent in (1, *answers)
    }
    assert {e["status"] for e in events.values()} == {"failed"}, events
    spans = [span for event in events.values() for span in _spans_of(service, event)]
    (refused,) = _calls(_spans_of(service, events[1]), "POST")
    assert refused["status"] == "ERROR" and refused["attributes"]["error.type"] == "400", refused
    assert refused["attributes"]["http.response.status_code"] == 400 and "***" in refused["status_message"]
    for agent, (act, error_type) in answers.items():
        polls = _calls(_spans_of(service, events[agent]), "GET")
        assert polls, agent
        last = polls[0]["attributes"]
        assert polls[0]["status"] == "ERROR", (agent, polls[0])
        assert last["http.response.status_code"] == act.status, (agent, last)
        assert last["error.type"] == error_type, (agent, last)
        assert last["cekura.poll.number"] >= 1 and "cekura.status" not in last, (agent, last)
    assert _violations(spans) == []
    leaks = find_leaks(spans, {"api": API_KEY, "provider": PROVIDER_KEY, "otlp": OTLP_TEAM})
    assert leaks == [], "\n".join(map(str, leaks))


def test_a_poll_past_the_traced_ones_that_fails_or_ends_gets_a_span(wire: Wire, start: Callable[..., Service]) -> None:
    """HELD. Polls 1-2 are traced; polls 3-4 (running) are not; poll 5 fails with a 400 quoting the provider key
    (JSON-escaped): its span is there, poll number 5, status 400, masked. Another job's poll 5 ends it: its span is
    there, with `cekura.status`, and polls 3-4 have none."""
    running = reply(200, {"status": "in_progress"})
    escaped = "".join(f"\\u{ord(c):04x}" for c in PROVIDER_KEY)
    wire.on(r"/aiagents/1/tools/auto-fetch/$", reply(200, {"progress_id": "p-1"}))
    wire.on(
        r"/aiagents/1/tools/auto-fetch-progress/$",
        *[running] * 4,
        Act(400, ('{"detail": "' + escaped + '"}').encode()),
    )
    wire.on(r"/aiagents/2/tools/auto-fetch/$", reply(200, {"progress_id": "p-2"}))
    wire.on(
        r"/aiagents/2/tools/auto-fetch-progress/$",
        *[running] * 4,
        reply(200, {"status": "completed"}),
    )
    service = start(cekura_max_consecutive_errors=1)
    events = {
        agent: wait_job(service.client, service.client.submit(TOOLS, _tools(agent), job_id=f"late-{agent}"))
        for agent in (1, 2)
    }
    assert events[1]["status"] == "failed", events
    polls = _calls(_spans_of(service, events[1]), "GET")
    assert [p["attributes"]["cekura.poll.number"] for p in polls] == [1, 2, 5], polls
    last = polls[-1]
    assert last["status"] == "ERROR" and last["attributes"]["http.response.status_code"] == 400, last
    assert last["attributes"]["error.type"] == "400" and "***" in last["status_message"], last
    polls = _calls(_spans_of(service, events[2]), "GET")
    assert [p["attributes"]["cekura.poll.number"] for p in polls] == [1, 2, 5], polls
    assert polls[-1]["attributes"]["cekura.status"] == "completed", polls[-1]
    spans = _spans_of(service, events[1]) + _spans_of(service, events[2])
    leaks = find_leaks(spans, {"provider": PROVIDER_KEY, "escaped": escaped})
    assert leaks == [], "\n".join(map(str, leaks))


def test_a_call_that_stalls_before_its_answer_names_no_status(wire: Wire, start: Callable[..., Service]) -> None:
    """HELD. A poll whose answer never starts within CEKURA_HTTP_TIMEOUT_S: its span is an ERROR
    `TransientError` and names no status code (no answer came)."""
    wire.on(r"/auto-fetch/$", reply(200, {"progress_id": "p-1"}))
    wire.on(r"/auto-fetch-progress/$", Act(200, b'{"status": "completed"}', stall_s=2.0, stall_before=True))
    service = start(cekura_max_consecutive_errors=1, cekura_http_timeout_s=0.5)
    event = wait_job(service.client, service.client.submit(TOOLS, _tools(1), job_id="stall"))
    assert event["status"] == "failed", event
    (poll,) = _calls(_spans_of(service, event), "GET")
    assert poll["status"] == "ERROR" and poll["attributes"]["error.type"] == "TransientError", poll
    assert "http.response.status_code" not in poll["attributes"], poll
