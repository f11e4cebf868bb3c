"""The simulator's HTTP/1.1 layer on `asyncio.Protocol`: request parsing, answer encoding, per-connection state.

Keep-alive, pipelining, Content-Length bodies only (chunked is a 411), `Expect: 100-continue`, one
`transport.write` per batch of pipelined answers, answers strictly in request order. A delayed answer (latency or
hang fault) pauses reading on its connection until it is written; a dropped one closes the connection unanswered.
What a request means is up to the `Handler` (`simulator.app.Simulator`).
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple, Protocol, cast

from simulator.replies import dumps

JSON = b"application/json"
MAX_HEAD = 64 * 1024
MAX_BODY = 8 * 1024 * 1024
REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
STATUS_LINES = {code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in REASONS.items()}


class Response(NamedTuple):
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: bytes = b""
    delay: float = 0.0
    drop: bool = False


def encode(response: Response, close: bool) -> bytes:
    head = b"%sContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n" % (
        STATUS_LINES[response.status],
        response.content_type,
        len(response.body),
        response.headers,
        b"Connection: close\r\n" if close else b"",
    )
    return head + response.body


def json_response(status: int, obj: Any) -> Response:
    return Response(status, dumps(obj))


class Handler(Protocol):
    """What a connection needs from the simulator it serves (the event loop thread is the only one touching it)."""

    connections: set[Connection]
    connections_total: int

    def handle(
        self, method: bytes, target: str, api_key: bytes | None, body: bytes, host: bytes | None = None
    ) -> Response: ...


class Connection(asyncio.Protocol):
    """One client connection: parses pipelined HTTP/1.1 requests and answers them strictly in order."""

    __slots__ = ("buf", "busy", "closed", "continued", "sim", "timer", "transport")

    def __init__(self, sim: Handler) -> None:
        self.sim = sim
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.closed = False
        self.continued = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.sim.connections.add(self)
        self.sim.connections_total += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.sim.connections.discard(self)

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.buf += data
        if not self.busy:
            self._process()

    def _close(self, pending: list[bytes]) -> None:
        transport = self.transport
        assert transport is not None
        if pending:
            transport.write(b"".join(pending))
        self.closed = True
        transport.close()

    def _fail(self, pending: list[bytes], status: int, message: str) -> None:
        pending.append(encode(json_response(status, {"detail": message}), close=True))
        self._close(pending)

    def _process(self) -> None:
        transport = self.transport
        assert transport is not None
        buf = self.buf
        sim = self.sim
        out: list[bytes] = []
        while buf:
            if buf[0] in (13, 10):  # tolerate stray CRLF between requests
                del buf[:1]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._fail(out, 431, "Request header too large.")
                    return
                break
            lines = bytes(buf[:end]).split(b"\r\n")
            parts = lines[0].split(b" ")
            if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                self._fail(out, 400, "Malformed request line.")
                return
            method, raw_target, version = parts
            keep_alive = version == b"HTTP/1.1"
            length = 0
            api_key: bytes | None = None
            host: bytes | None = None
            expect_continue = False
            for line in lines[1:]:
                colon = line.find(b":")
                if colon <= 0:
                    self._fail(out, 400, "Malformed header line.")
                    return
                name = line[:colon].strip().lower()
                if name == b"content-length":
                    value = line[colon + 1 :].strip()
                    if not value.isdigit():
                        self._fail(out, 400, "Invalid Content-Length.")
                        return
                    length = int(value)
                elif name == b"x-cekura-api-key":
                    api_key = line[colon + 1 :].strip()
                elif name == b"host":
                    host = line[colon + 1 :].strip()
                elif name == b"connection":
                    value = line[colon + 1 :].lower()
                    if b"close" in value:
                        keep_alive = False
                    elif b"keep-alive" in value:
                        keep_alive = True
                elif name == b"transfer-encoding":
                    self._fail(out, 411, "Chunked transfer encoding is not supported; send Content-Length.")
                    return
                elif name == b"expect":
                    expect_continue = b"100-continue" in line[colon + 1 :].lower()
            if length > MAX_BODY:
                self._fail(out, 413, "Request body too large.")
                return
            total = end + 4 + length
            if len(buf) < total:
                if expect_continue and not self.continued:
                    out.append(b"HTTP/1.1 100 Continue\r\n\r\n")
                    self.continued = True
                break
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            self.continued = False
            response = sim.handle(method, raw_target.decode("latin-1"), api_key, body, host)
            if response.delay > 0:
                if out:
                    transport.write(b"".join(out))
                self.busy = True
                transport.pause_reading()
                loop = asyncio.get_running_loop()
                self.timer = loop.call_later(response.delay, self._deferred, response, not keep_alive)
                return
            if response.drop:
                self._close(out)
                return
            out.append(encode(response, not keep_alive))
            if not keep_alive:
                self._close(out)
                return
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _deferred(self, response: Response, close: bool) -> None:
        self.timer = None
        if self.closed:
            return
        transport = self.transport
        assert transport is not None
        if response.drop:
            self._close([])
            return
        if close:
            self._close([encode(response, True)])
            return
        transport.write(encode(response, False))
        self.busy = False
        transport.resume_reading()
        if self.buf:
            self._process()
