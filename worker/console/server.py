"""Running the console: `cekura-worker console` in its own process (`serve`), or in a thread of another program,
such as the demo (`serve_in_thread`).

It is a separate process from the workers, so a worker pays nothing for it, open or not; what an open page costs
Redis is in `worker.console.live`. It listens on 127.0.0.1 unless `--host` says otherwise, and answers only to the
names it listens on (`worker.console.headers`). uvicorn serves it over h11, with its logs routed through the
service's logging (JSON lines, secrets masked).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import structlog
import uvicorn
from starlette.applications import Starlette

from config.settings import Settings
from worker.console.app import create_app
from worker.console.headers import allowed_hosts
from worker.errors import ConfigError
from worker.redact import register_settings

log = structlog.get_logger(__name__)

#: Where the console listens unless told otherwise: this machine only.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8089

#: Seconds open event streams get to end when the console stops.
DEFAULT_GRACEFUL_S = 2

#: Seconds `serve_in_thread` waits for the console to listen.
DEFAULT_START_TIMEOUT_S = 10.0


def _socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    """The URL to open for a console bound to `host` (every interface: loopback)."""
    name = host.strip("[]")
    name = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(name, name)
    return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"


def _server(settings: Settings, host: str, port: int) -> tuple[uvicorn.Server, socket.socket, Starlette]:
    register_settings(settings)  # any text the console shows or logs is redacted, as the workers' is
    app = create_app(settings, hosts=allowed_hosts(host))
    try:
        sock = _socket(host, port)
    except OSError as exc:
        raise ConfigError(f"the console can't listen on {host} port {port}: {exc.strerror or exc}") from None
    config = uvicorn.Config(
        app,
        log_config=None,  # uvicorn's records go through the service's logging (or the host program's)
        access_log=True,
        server_header=False,
        date_header=False,
        http="h11",
        ws="none",
        lifespan="on",
        timeout_graceful_shutdown=DEFAULT_GRACEFUL_S,
        proxy_headers=False,
    )
    return uvicorn.Server(config), sock, app


def serve(settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
    """Serve the console until interrupted (SIGINT or SIGTERM); returns the exit code."""
    from worker.runtime import logging as service_logging

    service_logging.configure(settings)
    server, sock, _ = _server(settings, host, port)
    url = _url(host, sock.getsockname()[1])
    read_only = settings.cekura_console_token is None
    log.info("console_started", url=url, read_only=read_only, redis=settings.redis_url_redacted)
    if allowed_hosts(host) is None:
        log.warning("console_exposed", host=host, hint="every interface, any Host header: put a proxy in front")
    print(f"cekura-worker console listening on {url}" + (" (read-only)" if read_only else ""), flush=True)
    server.run(sockets=[sock])
    return 0


@dataclass
class ConsoleHandle:
    """A console serving from a background thread: `url` to open, `stop()` to end it."""

    url: str
    app: Starlette
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self.app.state.console.hub.stop()  # ends the open event streams at once
        self.server.should_exit = True
        self.thread.join(timeout)


def serve_in_thread(settings: Settings, host: str = DEFAULT_HOST, port: int = 0) -> ConsoleHandle:
    """Serve the console from a daemon thread (port 0: a free one); returns once it listens."""
    server, sock, app = _server(settings, host, port)
    url = _url(host, sock.getsockname()[1])
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="cekura-console", daemon=True)
    thread.start()
    deadline = time.monotonic() + DEFAULT_START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the console did not start on {url}")
        time.sleep(0.01)
    return ConsoleHandle(url, app, server, thread)
