"""Loopback HTTP/1.1 server speaking the Cekura API contract, so demo, tests and benchmarks need no api.cekura.ai.

It is a deliberately small server on `asyncio.Protocol` (stdlib only, uvloop when importable): keep-alive,
pipelining, Content-Length bodies only, one `transport.write` per batch of pipelined answers. It has to keep up with a
worker polling thousands of times a second while sharing a two-core box, so per-request work is a dictionary lookup,
a few comparisons and one `json.dumps`.

Operation routes are the nine paths of `cekura-openapi.json` (each ends in `/`). Control routes live under `/_sim/`
and need no API key: `GET /_sim/stats`, `GET /_sim/polls`, `GET|POST /_sim/faults`, `POST /_sim/config`
(duration_s, polls_to_complete, rate_limit_rps), `POST /_sim/reset`, `GET /_sim/health`. Stats count operation
requests only, keyed `"<route name> <status>"` where the route name is the path's last segment (`auto-fetch`,
`auto-fetch-progress`, ..., `unknown` for unmatched paths) and a dropped connection counts as status `dropped`.
A request is checked in this order: route (404/405), API key (401), rate limit (429), injected fault, operation.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import importlib
import json
import math
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar, cast
from urllib.parse import parse_qs

from simulator import jobs
from simulator.faults import (
    DROP,
    ERROR,
    HANG,
    MALFORMED,
    NONE,
    RATE_429,
    RATE_LIMIT,
    UNEXPECTED_STATUS,
    UNKNOWN_STATUS,
    FaultInjector,
    Faults,
    RequestWindow,
)

T = TypeVar("T")

_JSON = b"application/json"
_MAX_HEAD = 64 * 1024
_MAX_BODY = 8 * 1024 * 1024
_AGENT_PREFIX = "/test_framework/v2/aiagents/"
_REASONS = {
    100: "Continue",
    200: "OK",
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
}
_STATUS_LINES = {code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in _REASONS.items()}
_NOT_FOUND = b'{"detail":"Not found."}'
_UNAUTHORIZED = b'{"detail":"Invalid API key."}'


@dataclass
class SimConfig:
    """How to run the simulator: where to listen, the API key it demands, job timing, faults and the seed."""

    host: str = "127.0.0.1"
    port: int = 0
    api_key: str = "sim-key"
    duration_s: float = 2.0
    polls_to_complete: int | None = None
    faults: Faults = field(default_factory=Faults)
    rate_limit_rps: float = 0
    seed: int = 0
    #: Serve HTTPS with this context instead of plain HTTP (in-process use, for the client's TLS tests).
    ssl_context: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        _check_timing(self.duration_s, self.polls_to_complete, self.rate_limit_rps)


def _check_timing(duration_s: Any, polls_to_complete: Any, rate_limit_rps: Any) -> None:
    if isinstance(duration_s, bool) or not isinstance(duration_s, int | float) or not duration_s >= 0:
        raise ValueError(f"duration_s must be a number >= 0, got {duration_s!r}")
    if polls_to_complete is not None and (
        isinstance(polls_to_complete, bool) or not isinstance(polls_to_complete, int) or polls_to_complete < 1
    ):
        raise ValueError(f"polls_to_complete must be None or an integer >= 1, got {polls_to_complete!r}")
    if isinstance(rate_limit_rps, bool) or not isinstance(rate_limit_rps, int | float) or not rate_limit_rps >= 0:
        raise ValueError(f"rate_limit_rps must be a number >= 0 (0 = off), got {rate_limit_rps!r}")


class _Response(NamedTuple):
    status: int
    body: bytes
    content_type: bytes = _JSON
    headers: bytes = b""
    delay: float = 0.0
    drop: bool = False


def _encode(response: _Response, close: bool) -> bytes:
    head = b"%sContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n" % (
        _STATUS_LINES[response.status],
        response.content_type,
        len(response.body),
        response.headers,
        b"Connection: close\r\n" if close else b"",
    )
    return head + response.body


def _json_response(status: int, obj: Any) -> _Response:
    return _Response(status, jobs.dumps(obj))


_Operation = Callable[[int | None, str, bytes, str | None], jobs.Reply]


class _Route(NamedTuple):
    name: str
    method: bytes
    progress: bool
    operation: _Operation


def _progress_id(query: str) -> str | None:
    if query.startswith("progress_id=") and "&" not in query and "%" not in query and "+" not in query:
        return query[12:] or None
    values = parse_qs(query).get("progress_id")
    return values[0] if values else None


class _Simulator:
    """Routing, statistics and control of one simulator instance; only ever touched from its event loop thread."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.api_key = cfg.api_key.encode()
        self.rate_limit_rps = cfg.rate_limit_rps
        self.store = jobs.JobStore(cfg.duration_s, cfg.polls_to_complete, cfg.seed)
        self.injector = FaultInjector(cfg.faults, cfg.seed)
        self.window = RequestWindow()
        self.connections: set[_Connection] = set()
        self.connections_total = 0
        self.requests_total = 0
        self.by_route: dict[tuple[str, int | str], int] = {}
        self.started_at = time.time()
        store = self.store

        def progress(kind: str) -> _Operation:
            def op(agent_id: int | None, query: str, body: bytes, unexpected: str | None) -> jobs.Reply:
                return store.progress(kind, agent_id, _progress_id(query), unexpected)

            return op

        def auto_fetch(agent_id: int | None, query: str, body: bytes, unexpected: str | None) -> jobs.Reply:
            return store.start_auto_fetch(cast(int, agent_id), body)

        def toggle(agent_id: int | None, query: str, body: bytes, unexpected: str | None) -> jobs.Reply:
            return store.start_toggle(cast(int, agent_id), body)

        def scenario(agent_id: int | None, query: str, body: bytes, unexpected: str | None) -> jobs.Reply:
            return store.start_scenario_agent(body)

        def cancel(agent_id: int | None, query: str, body: bytes, unexpected: str | None) -> jobs.Reply:
            return store.cancel_scenario_agent(body)

        def clean(agent_id: int | None, query: str, body: bytes, unexpected: str | None) -> jobs.Reply:
            return store.start_clean_description(body)

        self._agent_routes: dict[str, _Route] = {
            "auto-fetch/": _Route("auto-fetch", b"POST", False, auto_fetch),
            "auto-fetch-progress/": _Route("auto-fetch-progress", b"GET", True, progress(jobs.AUTO_FETCH)),
            "toggle-mock-tools/": _Route("toggle-mock-tools", b"POST", False, toggle),
            "toggle-mock-tools-progress/": _Route(
                "toggle-mock-tools-progress", b"GET", True, progress(jobs.TOGGLE_MOCK_TOOLS)
            ),
        }
        scenarios = "/test_framework/v1/scenarios/"
        metrics = "/test_framework/v1/metrics/"
        self._static_routes: dict[str, _Route] = {
            scenarios + "scenario-agent/": _Route("scenario-agent", b"POST", False, scenario),
            scenarios + "scenario-agent-progress/": _Route(
                "scenario-agent-progress", b"GET", True, progress(jobs.SCENARIO_AGENT)
            ),
            scenarios + "cancel-agent/": _Route("cancel-agent", b"POST", False, cancel),
            metrics + "generate_clean_description_bg/": _Route("generate_clean_description_bg", b"POST", False, clean),
            metrics + "generate_clean_description_progress/": _Route(
                "generate_clean_description_progress", b"GET", True, progress(jobs.CLEAN_DESCRIPTION)
            ),
        }

    # -- request handling -------------------------------------------------------------------------------------

    def _match(self, path: str) -> tuple[_Route | None, int | None]:
        route = self._static_routes.get(path)
        if route is not None:
            return route, None
        if path.startswith(_AGENT_PREFIX):
            ident, sep, rest = path[len(_AGENT_PREFIX) :].partition("/")
            if sep and ident.isascii() and ident.isdigit():
                route = self._agent_routes.get(rest)
                if route is not None:
                    return route, int(ident)
        return None, None

    def _count(self, name: str, status: int | str) -> None:
        key = (name, status)
        self.by_route[key] = self.by_route.get(key, 0) + 1

    def handle(self, method: bytes, target: str, api_key: bytes | None, body: bytes) -> _Response:
        path, _, query = target.partition("?")
        if path.startswith("/_sim/"):
            return self._control(method, path, body)
        now = time.monotonic()
        self.requests_total += 1
        self.window.arrive(now)
        route, agent_id = self._match(path)
        if route is None:
            self._count("unknown", 404)
            return _Response(404, _NOT_FOUND)
        if method != route.method:
            self._count(route.name, 405)
            return _Response(405, b'{"detail":"Method not allowed."}', headers=b"Allow: %s\r\n" % route.method)
        if api_key != self.api_key:
            self._count(route.name, 401)
            return _Response(401, _UNAUTHORIZED)
        injector = self.injector
        if self.rate_limit_rps > 0 and not self.window.admit(now, self.rate_limit_rps):
            injector.counts[RATE_LIMIT] += 1
            self._count(route.name, 429)
            return self._throttled(injector.latency_s)
        delay = injector.latency_s
        fault = injector.decide(route.progress) if injector.active else NONE
        unexpected: str | None = None
        if fault != NONE:
            if fault == DROP:
                self._count(route.name, "dropped")
                return _Response(0, b"", delay=delay, drop=True)
            if fault == HANG:
                delay += injector.faults.hang_s
            elif fault == ERROR:
                status, content_type, payload = injector.next_error()
                self._count(route.name, status)
                return _Response(status, payload, content_type, delay=delay)
            elif fault == RATE_429:
                self._count(route.name, 429)
                return self._throttled(delay)
            elif fault == MALFORMED:
                self._count(route.name, 200)
                return _Response(200, injector.next_malformed(), delay=delay)
            elif fault == UNKNOWN_STATUS:
                unexpected = UNEXPECTED_STATUS
        status, payload = route.operation(agent_id, query, body, unexpected)
        self._count(route.name, status)
        return _Response(status, payload, delay=delay)

    def _throttled(self, delay: float) -> _Response:
        retry_after = self.injector.next_retry_after()
        seconds = math.ceil(self.injector.faults.retry_after_s)
        return _Response(
            429,
            b'{"detail":"Request was throttled. Expected available in %d seconds."}' % seconds,
            headers=b"Retry-After: %s\r\n" % retry_after.encode(),
            delay=delay,
        )

    # -- control routes ---------------------------------------------------------------------------------------

    def _control(self, method: bytes, path: str, body: bytes) -> _Response:
        name = path.rstrip("/")
        try:
            if method == b"GET":
                if name == "/_sim/stats":
                    return _json_response(200, self.stats())
                if name == "/_sim/polls":
                    return _json_response(200, self.store.polls_report())
                if name == "/_sim/faults":
                    return _json_response(200, self.faults_report())
                if name == "/_sim/health":
                    return _json_response(200, {"ok": True})
            elif method == b"POST":
                if name == "/_sim/reset":
                    self.reset()
                    return _json_response(200, {"ok": True})
                if name in ("/_sim/faults", "/_sim/config"):
                    changes = json.loads(body) if body.strip() else {}
                    if not isinstance(changes, dict):
                        raise ValueError("expected a JSON object")
                    if name == "/_sim/faults":
                        self.set_faults(**changes)
                        return _json_response(200, self.faults_report())
                    self.configure(**changes)
                    return _json_response(200, self.config_report())
        except (ValueError, TypeError) as exc:
            return _json_response(400, {"detail": str(exc)})
        return _Response(404, _NOT_FOUND)

    def stats(self) -> dict[str, Any]:
        store = self.store
        return {
            "requests_total": self.requests_total,
            "by_route": {f"{name} {status}": count for (name, status), count in sorted(self.by_route.items(), key=str)},
            "started_jobs": store.started_jobs,
            "started_by_kind": dict(store.started_by_kind),
            "jobs": len(store.jobs),
            "terminal_jobs": store.count_terminal(),
            "polls_total": store.polls_total,
            "max_rps_1s": self.window.max_rps_1s,
            "faults_injected": dict(self.injector.counts),
            "connections_total": self.connections_total,
            "connections_open": len(self.connections),
            "uptime_s": round(time.time() - self.started_at, 3),
            **self.config_report(),
            "faults": self.injector.faults.to_dict(),
        }

    def config_report(self) -> dict[str, Any]:
        return {
            "duration_s": self.store.duration_s,
            "polls_to_complete": self.store.polls_to_complete,
            "rate_limit_rps": self.rate_limit_rps,
            "seed": self.cfg.seed,
        }

    def faults_report(self) -> dict[str, Any]:
        return {**self.injector.faults.to_dict(), "rate_limit_rps": self.rate_limit_rps}

    def set_faults(self, **changes: Any) -> Faults:
        rate_limit = changes.pop("rate_limit_rps", None)
        faults = self.injector.faults.updated(**changes)
        if rate_limit is not None:
            self.configure(rate_limit_rps=rate_limit)
        self.injector.set(faults)
        return faults

    def configure(self, **changes: Any) -> None:
        unknown = sorted(set(changes) - {"duration_s", "polls_to_complete", "rate_limit_rps"})
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        duration_s = changes.get("duration_s", self.store.duration_s)
        polls = changes.get("polls_to_complete", self.store.polls_to_complete)
        rate_limit = changes.get("rate_limit_rps", self.rate_limit_rps)
        _check_timing(duration_s, polls, rate_limit)
        self.store.duration_s = duration_s
        self.store.polls_to_complete = polls
        self.rate_limit_rps = rate_limit

    def reset(self) -> None:
        self.store.reset()
        self.injector.reset()
        self.window.reset()
        self.by_route.clear()
        self.requests_total = 0
        self.connections_total = len(self.connections)
        self.started_at = time.time()

    def close_connections(self) -> None:
        for conn in list(self.connections):
            conn.abort()


class _Connection(asyncio.Protocol):
    """One client connection: parses pipelined HTTP/1.1 requests and answers them strictly in order."""

    __slots__ = ("buf", "busy", "closed", "continued", "sim", "timer", "transport")

    def __init__(self, sim: _Simulator) -> None:
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
        pending.append(_encode(_json_response(status, {"detail": message}), close=True))
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
                if len(buf) > _MAX_HEAD:
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
            if length > _MAX_BODY:
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
            response = sim.handle(method, raw_target.decode("latin-1"), api_key, body)
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
            out.append(_encode(response, not keep_alive))
            if not keep_alive:
                self._close(out)
                return
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _deferred(self, response: _Response, close: bool) -> None:
        self.timer = None
        if self.closed:
            return
        transport = self.transport
        assert transport is not None
        if response.drop:
            self._close([])
            return
        if close:
            self._close([_encode(response, True)])
            return
        transport.write(_encode(response, False))
        self.busy = False
        transport.resume_reading()
        if self.buf:
            self._process()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


_Ready = Callable[[asyncio.AbstractEventLoop, int, asyncio.Event], None]


async def _serve(sim: _Simulator, on_ready: _Ready, handle_signals: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    server = await loop.create_server(
        lambda: _Connection(sim), sim.cfg.host, sim.cfg.port, backlog=2048, reuse_address=True, ssl=sim.cfg.ssl_context
    )
    if handle_signals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, stop.set)
    port = int(server.sockets[0].getsockname()[1])
    try:
        on_ready(loop, port, stop)
        await stop.wait()
    finally:
        server.close()
        sim.close_connections()
        await server.wait_closed()
        for _ in range(3):  # let the aborted transports run connection_lost before the loop closes
            await asyncio.sleep(0)


def _url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class SimulatorHandle:
    """A simulator serving from a background thread; every method is safe to call from any other thread."""

    def __init__(
        self,
        sim: _Simulator,
        loop: asyncio.AbstractEventLoop,
        stop_event: asyncio.Event,
        thread: threading.Thread,
        port: int,
    ) -> None:
        self._sim = sim
        self._loop = loop
        self._stop_event = stop_event
        self._thread = thread
        self.host = sim.cfg.host
        self.port = port
        self.url = _url(self.host, port, "https" if sim.cfg.ssl_context else "http")
        self.api_key = sim.cfg.api_key

    def _call(self, fn: Callable[[], T]) -> T:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=30)

    def stats(self) -> dict[str, Any]:
        return self._call(self._sim.stats)

    def polls(self) -> dict[str, dict[str, Any]]:
        return self._call(lambda: json.loads(json.dumps(self._sim.store.polls_report())))

    def set_faults(self, **changes: Any) -> Faults:
        """Change some fault settings (Faults field names, plus rate_limit_rps); the others keep their value."""
        return self._call(lambda: self._sim.set_faults(**changes))

    def clear_faults(self) -> Faults:
        """Switch every fault off, including the rate limiter."""
        return self._call(lambda: self._sim.set_faults(**Faults().to_dict(), rate_limit_rps=0))

    def configure(self, **changes: Any) -> None:
        """Change duration_s, polls_to_complete or rate_limit_rps for jobs started from now on."""
        self._call(lambda: self._sim.configure(**changes))

    def reset(self) -> None:
        self._call(self._sim.reset)

    def close_connections(self) -> None:
        """Close every client connection, as a server that drops idle keep-alive connections does."""
        self._call(self._sim.close_connections)

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop_event.set)
            self._thread.join(timeout=30)

    def __enter__(self) -> SimulatorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(cfg: SimConfig | None = None) -> SimulatorHandle:
    """Serve `cfg` from a daemon thread with its own event loop; returns once the socket is listening."""
    cfg = cfg or SimConfig()
    sim = _Simulator(cfg)
    ready = threading.Event()
    box: dict[str, Any] = {}

    def on_ready(loop: asyncio.AbstractEventLoop, port: int, stop: asyncio.Event) -> None:
        box.update(loop=loop, port=port, stop=stop)
        ready.set()

    def target() -> None:
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(_serve(sim, on_ready, handle_signals=False))
        except BaseException as exc:
            box["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=target, name="cekura-simulator", daemon=True)
    thread.start()
    ready.wait()
    if "port" not in box:
        thread.join(timeout=5)
        error = box.get("error")
        raise RuntimeError(f"cekura simulator failed to start: {error!r}") from error
    return SimulatorHandle(sim, box["loop"], box["stop"], thread, box["port"])


def run(cfg: SimConfig | None = None, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve in the foreground until SIGINT or SIGTERM; `on_ready` gets the URL once listening."""
    cfg = cfg or SimConfig()
    sim = _Simulator(cfg)

    def ready(loop: asyncio.AbstractEventLoop, port: int, stop: asyncio.Event) -> None:
        if on_ready is not None:
            on_ready(_url(cfg.host, port))

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(sim, ready, handle_signals=True))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cekura-simulator", description="Serve a simulated Cekura API (start/progress operations) over HTTP."
    )
    defaults = SimConfig()
    fault_defaults = Faults()
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port (default 8765)")
    parser.add_argument("--api-key", default=defaults.api_key, help="value X-CEKURA-API-KEY must carry")
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds a job runs")
    parser.add_argument("--polls", type=int, default=None, help="a job ends on its N-th progress GET instead")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of 5xx answers")
    parser.add_argument("--rate-429", type=float, default=0.0, help="share of 429 answers")
    parser.add_argument("--retry-after", type=float, default=fault_defaults.retry_after_s, help="Retry-After seconds")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every operation answer")
    parser.add_argument("--hang-rate", type=float, default=0.0, help="share of answers delayed by --hang-s")
    parser.add_argument("--hang-s", type=float, default=fault_defaults.hang_s)
    parser.add_argument("--drop-rate", type=float, default=0.0, help="share of connections closed unanswered")
    parser.add_argument("--malformed-rate", type=float, default=0.0, help="share of 200s with invalid JSON")
    parser.add_argument("--unknown-status-rate", type=float, default=0.0, help="share of polls saying 'paused'")
    parser.add_argument("--rate-limit-rps", type=float, default=0.0, help="429 above this many requests/s (0 = off)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: parse options, print the listening line, serve until interrupted."""
    args = _build_parser().parse_args(argv)
    try:
        faults = Faults(
            error_rate=args.error_rate,
            rate_429=args.rate_429,
            retry_after_s=args.retry_after,
            latency_ms=args.latency_ms,
            hang_rate=args.hang_rate,
            hang_s=args.hang_s,
            drop_rate=args.drop_rate,
            malformed_rate=args.malformed_rate,
            unknown_status_rate=args.unknown_status_rate,
        )
        cfg = SimConfig(
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            duration_s=args.duration,
            polls_to_complete=args.polls,
            faults=faults,
            rate_limit_rps=args.rate_limit_rps,
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"cekura simulator: {exc}", file=sys.stderr)
        return 2
    run(cfg, on_ready=lambda url: print(f"cekura simulator listening on {url}", flush=True))
    return 0


__all__ = ["SimConfig", "SimulatorHandle", "main", "run", "start_in_thread"]
