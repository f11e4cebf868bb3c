"""`cekura-worker webhooks`: the receiver of Cekura's result webhooks, in its own process (see `app`)."""

from __future__ import annotations

import socket

import structlog
import uvicorn

from config.settings import Settings
from worker.errors import ConfigError
from worker.redact import register_settings
from worker.webhooks.app import create_app

log = structlog.get_logger(__name__)

#: Where the receiver listens unless told otherwise.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8090

#: Connections and requests the receiver takes at once before answering 503.
DEFAULT_MAX_CONNECTIONS = 256


def build(settings: Settings, host: str, port: int) -> tuple[uvicorn.Server, socket.socket]:
    """The receiver's server for `settings` (refused without CEKURA_WEBHOOK_SECRET) and its listening socket (port
    0: a free one)."""
    register_settings(settings)
    try:
        app = create_app(settings)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    try:
        sock = socket.create_server((host.strip("[]"), port), family=family, reuse_port=False)
    except OSError as exc:
        raise ConfigError(f"the webhook receiver can't listen on {host} port {port}: {exc.strerror or exc}") from None
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,  # one `webhook_*` line per request instead
        server_header=False,
        date_header=False,
        http="h11",
        ws="none",
        lifespan="off",
        proxy_headers=False,
        # Connections held open (a client that never finishes its headers) are bounded: past this many, uvicorn
        # answers 503. Put a proxy with header and body timeouts in front (deploy/components/webhooks).
        limit_concurrency=DEFAULT_MAX_CONNECTIONS,
        timeout_keep_alive=5,
    )
    return uvicorn.Server(config), sock


def serve(settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
    """Serve until SIGINT or SIGTERM; returns the exit code."""
    from worker.runtime import logging as service_logging

    service_logging.configure(settings)
    server, sock = build(settings, host, port)
    bound = sock.getsockname()[1]
    url = f"http://[{host.strip('[]')}]:{bound}" if ":" in host else f"http://{host}:{bound}"
    log.info("webhooks_started", url=f"{url}/webhooks/cekura", redis=settings.redis_url_redacted)
    print(f"cekura-worker webhooks listening on {url}/webhooks/cekura", flush=True)
    server.run(sockets=[sock])
    return 0


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "build", "serve"]
