"""The Cekura client against a scripted HTTP server on loopback: a call ends within its total time limit however
slowly the answer trickles in, a request httpcore refuses to send never quotes the API key, and an answer that is
not a plain JSON object, however pathological, is a `PermanentError`.

The simulator answers like Cekura; these tests need answers no well-behaved server gives, so the server here sends
whatever bytes a test scripts, at the pace it scripts.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpcore
import pytest
from pydantic import SecretStr

from actors.kinds import KINDS
from config.settings import Settings, load_settings
from tests.conftest import TEST_REDIS_URL
from worker import redact
from worker.cekura.client import CekuraClient
from worker.cekura.transport import _Deadline, _DeadlineStream
from worker.errors import PermanentError, TransientError

KIND = KINDS["metric.clean_description"]
PARAMS = KIND.validate({"agent": 1, "metric_description": "calls end politely", "eval_type": "boolean"})
START_PATH, _ = KIND.paths(PARAMS)
API_KEY = "sk-client-test-4f2a9c"

#: Seconds between two bytes of a trickled answer.
TRICKLE_BYTE_S = 0.2


def answer(body: bytes, status: int = 200) -> bytes:
    """A complete HTTP/1.1 response carrying `body`."""
    head = f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


STARTED = answer(b'{"progress_id": "p-1", "session_id": 7}')


@dataclass
class Reply:
    """What the server sends for one request, and how fast."""

    data: bytes
    byte_delay_s: float = 0.0


@dataclass
class ScriptedServer:
    """An HTTP/1.1 server on loopback, one thread per connection, answering each request with `script(n)`, where n
    counts connections from 1; keep-alive unless the client closes."""

    script: Callable[[int], Reply]
    listener: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))
    requests: list[tuple[int, bytes]] = field(default_factory=list)  # (connection number, request head)
    connections: int = 0
    stopped: threading.Event = field(default_factory=threading.Event)
    _open: list[socket.socket] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def start(self) -> ScriptedServer:
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
                self.requests.append((number, head))
                reply = self.script(number)
                if not reply.byte_delay_s:
                    conn.sendall(reply.data)
                    continue
                for i in range(len(reply.data)):
                    if self.stopped.wait(reply.byte_delay_s):
                        return
                    conn.sendall(reply.data[i : i + 1])
        except OSError:  # the client hung up, or the test is over
            return
        finally:
            conn.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[int], Reply]], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: Callable[[int], Reply]) -> ScriptedServer:
        servers.append(ScriptedServer(script).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def connect() -> Iterator[Callable[[Settings], CekuraClient]]:
    """Make clients that are closed after the test, whether it passed or not."""
    clients: list[CekuraClient] = []

    def make(settings: Settings) -> CekuraClient:
        clients.append(CekuraClient(settings))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def settings_for(server: ScriptedServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": TEST_REDIS_URL,
        "cekura_api_url": server.url,
        "cekura_api_key": API_KEY,
        "cekura_http_timeout_s": 1.0,
        "cekura_lease_s": 2.0,  # so a call may take 1 s in all
        **overrides,
    }
    return load_settings(**values)


def test_a_call_whose_answer_trickles_in_times_out_at_its_total_limit(serve: Any, connect: Any) -> None:
    server = serve(lambda n: Reply(STARTED, byte_delay_s=TRICKLE_BYTE_S))  # ~13 s for the whole answer
    client = connect(settings_for(server))
    began = time.monotonic()

    with pytest.raises(TransientError, match=rf"POST {START_PATH}: timed out \(ReadTimeout\)"):
        client.start(KIND, PARAMS)

    took = time.monotonic() - began
    assert 0.9 <= took < 1.6, f"the call took {took:.2f}s; its limit is 1s and each read's timeout 1s"


def test_a_normal_call_keeps_its_connection_for_the_next(serve: Any, connect: Any) -> None:
    server = serve(lambda n: Reply(STARTED))
    client = connect(settings_for(server))

    assert client.start(KIND, PARAMS).progress_id == "p-1"
    assert client.start(KIND, PARAMS).session_id == 7

    assert [number for number, _ in server.requests] == [1, 1]


def test_a_timed_out_call_leaves_no_connection_to_reuse(serve: Any, connect: Any) -> None:
    server = serve(lambda n: Reply(STARTED, byte_delay_s=TRICKLE_BYTE_S if n == 1 else 0.0))
    client = connect(settings_for(server))
    with pytest.raises(TransientError, match="timed out"):
        client.start(KIND, PARAMS)

    assert client.start(KIND, PARAMS).progress_id == "p-1"  # the next call has a full limit of its own

    assert [number for number, _ in server.requests] == [1, 2]  # on a fresh connection


def test_each_socket_operation_gets_at_most_the_time_left_and_none_past_the_deadline() -> None:
    calls: list[tuple[str, float | None]] = []

    class Recording(httpcore.NetworkStream):
        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            calls.append(("read", timeout))
            return b""

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            calls.append(("write", timeout))

        def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
            calls.append(("start_tls", kwargs.get("timeout", args[-1] if len(args) > 2 else None)))
            return self

    deadline = _Deadline()
    stream = _DeadlineStream(Recording(), deadline)
    stream.read(10, timeout=5.0)  # no deadline outside a call: the timeout as given
    deadline.at = time.monotonic() + 0.5
    stream.read(10, timeout=5.0)
    stream.write(b"x", timeout=0.1)
    assert isinstance(stream.start_tls(None, None, 5.0), _DeadlineStream)  # type: ignore[arg-type]
    assert calls[0] == ("read", 5.0)
    assert calls[1][1] is not None and 0.4 < calls[1][1] <= 0.5
    assert calls[2] == ("write", 0.1)
    assert calls[3][1] is not None and calls[3][1] <= 0.5

    deadline.at = time.monotonic() - 0.01
    for operation, expired in [
        (lambda: stream.read(10, 5.0), httpcore.ReadTimeout),
        (lambda: stream.write(b"x", 5.0), httpcore.WriteTimeout),
        (lambda: stream.start_tls(None, None, 5.0), httpcore.ConnectTimeout),  # type: ignore[arg-type]
    ]:
        with pytest.raises(expired):
            operation()
    assert len(calls) == 4  # nothing reached the socket past the deadline


def test_an_api_key_httpcore_refuses_is_never_quoted(serve: Any, connect: Any) -> None:
    server = serve(lambda n: Reply(STARTED))
    key = API_KEY + "\n"  # what Settings strips; a copy skips validation, as a future path to the client might
    client = connect(settings_for(server).model_copy(update={"cekura_api_key": SecretStr(key)}))

    with pytest.raises(PermanentError) as caught:
        client.start(KIND, PARAMS)

    assert str(caught.value) == f"POST {START_PATH}: request could not be sent (LocalProtocolError)"
    assert "4f2a9c" not in str(caught.value)
    assert server.requests == []


def test_a_network_errors_text_is_redacted(serve: Any, monkeypatch: pytest.MonkeyPatch, connect: Any) -> None:
    monkeypatch.setattr(redact, "_secrets", frozenset())
    monkeypatch.setattr(redact, "_matchers", ())
    redact.register([API_KEY])
    server = serve(lambda n: Reply(f"HTTQ/1.1 200 {API_KEY}\r\n\r\n".encode()))  # h11 quotes the bad status line
    client = connect(settings_for(server))

    with pytest.raises(TransientError) as caught:
        client.start(KIND, PARAMS)

    assert "connection failed (RemoteProtocolError" in str(caught.value)
    assert "4f2a9c" not in str(caught.value)


#: (what the answer is, its body, the reason the error gives)
PATHOLOGICAL = [
    ("nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("invalid UTF-8", b'{"status": "\xff\xfe"}', "not UTF-8"),
    ("UTF-16", '{"progress_id": "p-1"}'.encode("utf-16"), "not UTF-8"),
    ("a NaN", b'{"progress_id": "p-1", "score": NaN}', "NaN is not a JSON number"),
    ("an Infinity", b'{"progress_id": "p-1", "score": -Infinity}', "-Infinity is not a JSON number"),
    ("a float that overflows", b'{"progress_id": "p-1", "score": 1e999}', "a number too large for a float"),
    ("a 100-digit integer", b'{"progress_id": "p-1", "n": ' + b"9" * 100 + b"}", "an integer of 100 digits"),
    ("a 5,000-digit integer", b'{"progress_id": "p-1", "n": ' + b"9" * 5000 + b"}", "an integer of 5000 digits"),
    ("an unpaired surrogate", b'{"progress_id": "p-\\ud800"}', "a string holds an unpaired UTF-16 surrogate"),
    ("a list", b'[{"progress_id": "p-1"}]', "not a JSON object"),
    ("a string", b'"p-1"', "not a JSON object"),
    ("truncated", b'{"progress_id": "p-', "not JSON (Unterminated string"),
    ("empty", b"", "not JSON (Expecting value)"),
]


@pytest.mark.parametrize(("what", "body", "reason"), PATHOLOGICAL, ids=[p[0] for p in PATHOLOGICAL])
def test_a_pathological_answer_is_a_permanent_error(
    serve: Any, what: str, body: bytes, reason: str, connect: Any
) -> None:
    server = serve(lambda n: Reply(answer(body)))
    client = connect(settings_for(server))

    with pytest.raises(PermanentError) as caught:
        client.start(KIND, PARAMS)

    assert str(caught.value).startswith(f"invalid response from {START_PATH}: {reason}")
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("progress_id", [f"op-{API_KEY}", API_KEY.upper(), "sk-job-secret-77"])
def test_a_progress_id_quoting_a_secret_is_an_invalid_answer(
    serve: Any, connect: Any, monkeypatch: pytest.MonkeyPatch, progress_id: str
) -> None:
    monkeypatch.setattr(redact, "_secrets", frozenset())
    monkeypatch.setattr(redact, "_matchers", ())
    redact.register([API_KEY])
    kind = KINDS["agent.toggle_mock_tools"]
    params = kind.validate({"agent_id": 6, "enabled": True, "api_key": "sk-job-secret-77"})
    server = serve(lambda n: Reply(answer(b'{"progress_id": "' + progress_id.encode() + b'"}')))
    client = connect(settings_for(server))

    with pytest.raises(PermanentError) as caught:
        client.start(kind, params)

    assert str(caught.value).endswith(": progress_id quotes a secret") and caught.value.status_code == 200
    assert progress_id not in str(caught.value)


def test_a_paired_surrogate_escape_decodes_as_its_character(serve: Any, connect: Any) -> None:
    server = serve(lambda n: Reply(answer(b'{"progress_id": "p-\\ud83d\\ude00"}')))
    client = connect(settings_for(server))
    assert client.start(KIND, PARAMS).progress_id == "p-\U0001f600"
