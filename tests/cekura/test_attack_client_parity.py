"""Attack: the plain Cekura client (tracing off) behaves exactly as before `_call` was split into `_exchange` and
`_answer` (commit 8a1c6d9). Differential: the client as it was at efff92e (its source from git, loaded as a module of
its own) and today's client, plain and traced with tracing off (no scope, an unsampled scope, tracing stopped), make
the same calls, each against a fresh loopback server that sends the same scripted bytes; every outcome (the value, or
the error's type, text, status_code, maybe_sent, refused, retry_after_s and suppressed context), the connection each
request came on and the deadline each call set must be the same.
"""

from __future__ import annotations

import dataclasses
import math
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import INVALID_SPAN_CONTEXT

from actors.kinds import KINDS
from config.settings import Settings, load_settings
from tests.conftest import TEST_REDIS_URL
from worker.cekura.client import CekuraClient
from worker.errors import CekuraError
from worker.tracing import state
from worker.tracing.calls import TracedCekuraClient
from worker.tracing.spans import Scope

ROOT = Path(__file__).resolve().parents[2]
BEFORE = "efff92e"
API_KEY = "sk-split-attack-9d1e"
PROVIDER_KEY = "pk-provider-secret-77aa21"

CLEAN = KINDS["metric.clean_description"]
CLEAN_PARAMS = CLEAN.validate({"agent": 1, "metric_description": "calls end politely", "eval_type": "boolean"})
TOGGLE = KINDS["agent.toggle_mock_tools"]
TOGGLE_PARAMS = TOGGLE.validate({"agent_id": 3, "enabled": True, "api_key": PROVIDER_KEY})
RUN = KINDS["evaluator.run"]
RUN_PARAMS = RUN.validate({"agent_id": 5, "scenarios": [1]})
IMPROVE = KINDS["metric.improve_from_feedback"]

#: A server date and an HTTP-date 90 s after it (the wait measured against the answer's own Date).
SERVER_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
LATER_DATE = "Wed, 21 Oct 2015 07:29:30 GMT"


def _old_client_module() -> types.ModuleType:
    name = "_cekura_client_" + BEFORE
    if name in sys.modules:
        return sys.modules[name]
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{BEFORE}:worker/cekura/client.py"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"no git history to load the client as of {BEFORE}")
    module = types.ModuleType(name)
    module.__file__ = f"{BEFORE}:worker/cekura/client.py"
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


# --- a loopback server that sends scripted bytes, one reply per request, in order ---------------------------------


def http(status: int, body: bytes = b"", headers: tuple[tuple[str, str], ...] = (), *, length: bool = True) -> bytes:
    head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


@dataclass
class Reply:
    data: bytes
    close: bool = False  # close the connection once `data` is sent
    byte_delay_s: float = 0.0


@dataclass
class Server:
    replies: list[Reply]
    listener: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))
    requests: list[tuple[int, bytes]] = field(default_factory=list)  # (connection number, request line)
    connections: int = 0
    stopped: threading.Event = field(default_factory=threading.Event)
    _open: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def start(self) -> Server:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()
        for conn in self._open:
            conn.close()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buffer = b""
        try:
            while not self.stopped.is_set():
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                while len(buffer) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                buffer = buffer[length:]
                with self._lock:
                    self.requests.append((number, head.split(b"\r\n")[0]))
                    reply = self.replies.pop(0) if self.replies else Reply(http(200, b'{"status": "completed"}'))
                if reply.byte_delay_s:
                    for i in range(len(reply.data)):
                        if self.stopped.wait(reply.byte_delay_s):
                            return
                        conn.sendall(reply.data[i : i + 1])
                else:
                    conn.sendall(reply.data)
                if reply.close:
                    return
        except OSError:
            return
        finally:
            conn.close()


def settings_for(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": TEST_REDIS_URL,
        "cekura_api_url": url,
        "cekura_api_key": API_KEY,
        "cekura_http_timeout_s": 0.4,
        "cekura_lease_s": 1.0,  # each call: 0.5 s in all
        "cekura_max_response_bytes": 2048,
        **overrides,
    }
    return load_settings(**values)


# --- the clients under comparison -----------------------------------------------------------------------------------


def _unsampled_scope() -> Scope:
    return Scope("job-1", "metric.clean_description", INVALID_SPAN_CONTEXT, False, 1, "0" * 32, "0" * 16)


def _sampled_scope() -> Scope:
    return Scope("job-1", "metric.clean_description", INVALID_SPAN_CONTEXT, True, 1, "0" * 32, "0" * 16)


#: name -> (client class, the scope its calls run under); tracing stays off (`state.current` is None) throughout.
VARIANTS: dict[str, tuple[Callable[[], type], Callable[[], Scope | None]]] = {
    "plain": (lambda: CekuraClient, lambda: None),
    "traced, no scope": (lambda: TracedCekuraClient, lambda: None),
    "traced, unsampled": (lambda: TracedCekuraClient, _unsampled_scope),
    "traced, tracing stopped": (lambda: TracedCekuraClient, _sampled_scope),
}


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        value = call()
    except CekuraError as exc:
        return (
            type(exc).__name__,
            str(exc),
            exc.status_code,
            getattr(exc, "maybe_sent", None),
            getattr(exc, "refused", None),
            getattr(exc, "retry_after_s", None),
            exc.__cause__,
            exc.__suppress_context__,
            type(exc.__context__).__name__,
        )
    if dataclasses.is_dataclass(value):
        return ("ok", type(value).__name__, dataclasses.astuple(value))
    return ("ok", value)


Step = tuple[Callable[[Any], Any], Reply | None]


def run(client_type: type, scope: Scope | None, steps: list[Step], **overrides: Any) -> dict[str, Any]:
    server = Server([reply for _, reply in steps if reply is not None]).start()
    client = client_type(settings_for(server.url, **overrides))
    token = state.scope.set(scope)
    assert state.current is None, "tracing must be off for these comparisons"
    try:
        outcomes = [outcome(lambda call=call: call(client)) for call, _ in steps]  # type: ignore[misc]
    finally:
        state.scope.reset(token)
        client.close()
        server.stop()
    return {"outcomes": outcomes, "requests": server.requests}


@pytest.fixture(scope="module")
def old_client() -> type:
    return _old_client_module().CekuraClient


def compare(old_client: type, steps: Callable[[], list[Step]], **overrides: Any) -> None:
    before = run(old_client, None, steps(), **overrides)
    for name, (client_type, scope) in VARIANTS.items():
        after = run(client_type(), scope(), steps(), **overrides)
        assert after == before, f"{name} differs from the client as of {BEFORE}"


# --- the attacks ------------------------------------------------------------------------------------------------------

OK = Reply(http(200, b'{"status": "completed"}'))
poll = lambda c: c.progress(CLEAN, CLEAN_PARAMS, "p-1")  # noqa: E731
poll_secret = lambda c: c.progress(TOGGLE, TOGGLE_PARAMS, "tid")  # noqa: E731
start = lambda c: c.start(CLEAN, CLEAN_PARAMS)  # noqa: E731
start_secret = lambda c: c.start(TOGGLE, TOGGLE_PARAMS)  # noqa: E731
cancel_run = lambda c: c.cancel(RUN, None, "42")  # noqa: E731  (no body, secrets None, allow_empty)
find_run = lambda c: c.find(RUN, "[cw:job-1]")  # noqa: E731
poll_later = lambda c: (time.sleep(0.2), poll(c))[1]  # noqa: E731  (once the server's close has arrived)
send_answer = lambda c: c.answer(IMPROVE, "p-9", "yes", secrets=(PROVIDER_KEY,))  # noqa: E731

STATUS_REPLIES: dict[str, bytes] = {
    "200 object": http(200, b'{"status": "running", "n": 1}'),
    "201": http(201, b'{"status": "running"}'),
    "202": http(202, b'{"status": "running"}'),
    "203": http(203, b'{"status": "running"}'),
    "204 empty": http(204, b"", length=False),
    "200 empty": http(200, b""),
    "200 blank": http(200, b"  \r\n "),
    "200 not json": http(200, b"<html>oops</html>"),
    "200 list": http(200, b"[1, 2]"),
    "200 no status": http(200, b'{"state": "running"}'),
    "200 status not text": http(200, b'{"status": 3}'),
    "302": http(302, b"moved", (("Location", "/elsewhere"),)),
    "400 echoing a secret": http(400, b'{"detail": "bad key ' + PROVIDER_KEY.encode() + b'"}' + b"x" * 900),
    "400 secret across the cut": http(400, b"y" * 295 + PROVIDER_KEY.encode()),
    "401": http(401, b"no"),
    "403": http(403, PROVIDER_KEY.encode()),
    "404": http(404, b'{"detail": "Not found."}'),
    "405": http(405, b"method " + PROVIDER_KEY.encode()),
    "409": http(409, b"conflict"),
    "422": http(422, b"\xff\xfe invalid utf-8 " + PROVIDER_KEY.encode()),
    "429 none": http(429, b"slow down"),
    "429 delta": http(429, b"", (("Retry-After", "7"),)),
    "429 delta padded": http(429, b"", (("Retry-After", " 12 "),)),
    "429 huge delta": http(429, b"", (("Retry-After", "999999"),)),
    "429 date with Date": http(429, b"", (("Retry-After", LATER_DATE), ("Date", SERVER_DATE))),
    "429 past date with Date": http(429, b"", (("Retry-After", SERVER_DATE), ("Date", LATER_DATE))),
    "429 past date, no Date": http(429, b"", (("Retry-After", SERVER_DATE),)),
    "429 date, bad Date": http(429, b"", (("Retry-After", LATER_DATE), ("Date", "yesterday"))),
    "429 garbage": http(429, b"", (("Retry-After", "soon"),)),
    "429 unicode digits": http(429, b"", (("Retry-After", "\u00b2"),)),
    "500": http(500, b"boom " + PROVIDER_KEY.encode()),
    "503 with Retry-After": http(503, b"", (("Retry-After", "30"),)),
    "599": http(599, b""),
    "over declared size": http(200, b"z" * 3000),
    "over declared size, error status": http(500, b"z" * 3000),
    "chunked over size": b"HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"400\r\n" + b"a" * 1024 + b"\r\n" for _ in range(3))
    + b"0\r\n\r\n",
    "chunked ok": b'HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"sta\r\n'
    + b'e\r\ntus": "done"}\r\n0\r\n\r\n',
    "bad status line": b"NOT HTTP\r\n\r\n",
}

CALLS: dict[str, Callable[[Any], Any]] = {
    "progress": poll,
    "progress with a secret": poll_secret,
    "start": start,
    "start with a secret": start_secret,
    "cancel (secrets None, allow_empty)": cancel_run,
    "find": find_run,
    "answer": send_answer,
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("reply", list(STATUS_REPLIES))
def test_every_answer_is_the_same_outcome_and_the_connection_kept_or_dropped_alike(
    old_client: type, call: str, reply: str
) -> None:
    """Each answer, then a second call: the same value or error, and the second call on the same connection or a new
    one as before (kept after an HTTP error status, dropped after a failure to read)."""
    compare(old_client, lambda: [(CALLS[call], Reply(STATUS_REPLIES[reply])), (poll, OK)])


TRANSPORT: dict[str, Callable[[], list[Step]]] = {
    "closed before any answer": lambda: [(poll, Reply(b"", close=True)), (poll, OK)],
    "closed mid-body": lambda: [(poll, Reply(http(200, b'{"status": "x"}')[:-5], close=True)), (poll, OK)],
    "closed mid-body of an error": lambda: [(poll, Reply(http(404, b"not found here")[:-4], close=True)), (poll, OK)],
    "closed after a keep-alive answer": lambda: [(poll, Reply(OK.data, close=True)), (poll_later, OK), (poll, OK)],
    "a trickled answer past the call's limit": lambda: [(poll, Reply(OK.data, byte_delay_s=0.05)), (poll, OK)],
    "a trickled error past the call's limit": lambda: [
        (start, Reply(http(500, b"x" * 40), byte_delay_s=0.05)),
        (start, Reply(http(200, b'{"progress_id": "p-2"}'))),
    ],
    "no time left": lambda: [(lambda c: c.progress(CLEAN, CLEAN_PARAMS, "p", time_left_s=-1.0), None), (poll, OK)],
    "a start not safe to repeat takes a new connection": lambda: [
        (poll, OK),
        (lambda c: c.start(RUN, RUN_PARAMS), Reply(http(200, b'{"id": 11}'))),
        (poll, OK),
    ],
}


@pytest.mark.parametrize("case", list(TRANSPORT))
def test_a_transport_failure_is_the_same_error_and_drops_the_connection_alike(old_client: type, case: str) -> None:
    compare(old_client, TRANSPORT[case])


def test_a_refused_connection_is_the_same_unsent_error(old_client: type) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()  # nothing listens there now
    outcomes = []
    for client_type, scope in [(old_client, None)] + [(t(), s()) for t, s in VARIANTS.values()]:
        client = client_type(settings_for(url))
        token = state.scope.set(scope)
        try:
            outcomes.append((outcome(lambda c=client: poll(c)), outcome(lambda c=client: cancel_run(c))))
        finally:
            state.scope.reset(token)
            client.close()
    assert all(o == outcomes[0] for o in outcomes), outcomes
    assert outcomes[0][0][3] is False  # maybe_sent: never connected


@pytest.fixture
def ok_server() -> Iterator[Server]:
    server = Server([]).start()
    yield server
    server.stop()


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("time_left_s", [math.inf, 10.0, 0.2, 0.0])
def test_each_call_sets_the_deadline_as_before(
    ok_server: Server, old_client: type, variant: str, time_left_s: float
) -> None:
    """`_deadline.at` after a call: monotonic at the call + min(the call limit, time left) (0 for none left), for
    the old and the new client alike."""
    client_type, scope = VARIANTS[variant]
    seen = []
    for make in (old_client, client_type()):
        client = make(settings_for(ok_server.url, cekura_lease_s=4.0, cekura_http_timeout_s=1.0))
        token = state.scope.set(scope())
        try:
            before = time.monotonic()
            outcome(lambda c=client: c.progress(CLEAN, CLEAN_PARAMS, "p", time_left_s=time_left_s))
            after = time.monotonic()
        finally:
            state.scope.reset(token)
            client.close()
        expected = min(2.0, max(0.0, time_left_s))
        assert before + expected <= client._deadline.at <= after + expected
        seen.append(client._deadline.at - before)
    assert abs(seen[0] - seen[1]) < 0.2
