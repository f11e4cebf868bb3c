"""Loopback HTTP/1.1 server speaking the Cekura API contract, so demo, tests and benchmarks need no api.cekura.ai.

It is a deliberately small server on `asyncio.Protocol` (stdlib only, uvloop when importable): keep-alive,
pipelining, Content-Length bodies only, one `transport.write` per batch of pipelined answers. It has to keep up with a
worker polling thousands of times a second while sharing a two-core box, so per-request work is a dictionary lookup,
a few comparisons and one `json.dumps`.

This module runs a simulator, in a background thread (`start_in_thread`, `SimulatorHandle`) or in the foreground
(`run`). The HTTP layer is `simulator/protocol.py`, the operation routes `simulator/routes.py`, the request pipeline,
control routes (`/_sim/`) and statistics `simulator/app.py`, the command line `simulator/cli.py`; result webhooks
are POSTed from a small thread pool (`simulator/webhooks.py`), never from the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import json
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from simulator.app import Simulator
from simulator.config import SimConfig
from simulator.faults import Faults
from simulator.protocol import Connection

T = TypeVar("T")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


_Ready = Callable[[asyncio.AbstractEventLoop, int, asyncio.Event], None]


async def _serve(sim: Simulator, on_ready: _Ready, handle_signals: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    server = await loop.create_server(
        lambda: Connection(sim), sim.cfg.host, sim.cfg.port, backlog=2048, reuse_address=True, ssl=sim.cfg.ssl_context
    )
    if handle_signals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, stop.set)
    port = int(server.sockets[0].getsockname()[1])
    sim.serving_at(_url(sim.cfg.host, port, "https" if sim.cfg.ssl_context else "http"))
    try:
        on_ready(loop, port, stop)
        await stop.wait()
    finally:
        server.close()
        sim.close()
        await server.wait_closed()
        for _ in range(3):  # let the aborted transports run connection_lost before the loop closes
            await asyncio.sleep(0)


def _url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class SimulatorHandle:
    """A simulator serving from a background thread; every method is safe to call from any other thread."""

    def __init__(
        self,
        sim: Simulator,
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
        return self._call(lambda: json.loads(json.dumps(self._sim.polls_report())))

    def set_faults(self, **changes: Any) -> Faults:
        """Change some fault settings (Faults field names, plus rate_limit_rps); the others keep their value."""
        return self._call(lambda: self._sim.set_faults(**changes))

    def clear_faults(self) -> Faults:
        """Switch every fault off, including the rate limiter."""
        return self._call(lambda: self._sim.set_faults(**Faults().to_dict(), rate_limit_rps=0))

    def configure(self, **changes: Any) -> None:
        """Change duration_s, polls_to_complete, rate_limit_rps or durations for jobs started from now on, or
        webhook_url / webhook_secret (None switches them off) for results that end from now on."""
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
    sim = Simulator(cfg)
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
    sim = Simulator(cfg)

    def ready(loop: asyncio.AbstractEventLoop, port: int, stop: asyncio.Event) -> None:
        if on_ready is not None:
            on_ready(_url(cfg.host, port))

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(sim, ready, handle_signals=True))


__all__ = ["SimConfig", "SimulatorHandle", "run", "start_in_thread"]
