"""The console as an ASGI application: its routes, its security headers, and how it answers errors.

Errors never show their text unredacted, nor a traceback: a Redis failure says which Redis (password masked) and
what Redis said, through `worker.redact.redact`; anything else is "internal error" on the page and a log line
(whose values the service's logging redacts too).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config.settings import Settings
from worker.client import Client
from worker.console import forms, pages
from worker.console.guard import Guard
from worker.console.headers import SecurityHeaders
from worker.console.live import Hub
from worker.console.state import Console, render, templates
from worker.redact import redact

log = structlog.get_logger(__name__)

#: The console's own script, styles and icon.
STATIC = Path(__file__).with_name("static")

#: The largest request body the console reads, in bytes.
DEFAULT_MAX_BODY_BYTES = 262_144


def _error_page(request: Request, status: int, title: str, message: str) -> Response:
    return render(request, "error.html", {"page": "error", "title": title, "message": message}, status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    titles = {404: "Not found", 405: "Method not allowed", 413: "Too large"}
    return _error_page(request, exc.status_code, titles.get(exc.status_code, "Error"), redact(str(exc.detail)))


async def _redis_error(request: Request, exc: Exception) -> Response:
    console: Console = request.app.state.console
    where = console.settings.redis_url_redacted
    message = f"Redis at {where} failed: {redact(str(exc))} ({type(exc).__name__}). Try again shortly."
    log.warning("console_redis_failed", path=request.url.path, error=message)
    return _error_page(request, 503, "Redis unavailable", message)


class CatchAll:
    """Answers an unexpected exception with the console's 500 page, inside `SecurityHeaders` (Starlette's own
    500 handler sits outside every middleware, so its page would go without the security headers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:
            if scope["type"] != "http" or started:
                raise
            request = Request(scope, receive)
            log.error("console_request_failed", path=request.url.path, error_type=type(exc).__name__, exc_info=exc)
            message = "The console failed to answer this request; see its log."
            await _error_page(request, 500, "Internal error", message)(scope, receive, send)


def create_app(settings: Settings, *, client: Client | None = None, hosts: Iterable[str] | None = None) -> Starlette:
    """The console for `settings` (its Redis, its token), answering to `hosts` (None: any Host header).

    `client`: the Redis client to use (default: one of its own, closed with the app)."""
    guard = Guard(settings.cekura_console_token)
    own_client = client is None
    console = Console(
        settings=settings,
        client=client or Client(settings),
        guard=guard,
        hub=Hub(settings),
        templates=templates(),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        console.hub.stop()
        if own_client:
            console.client.close()

    routes = [
        Route("/", pages.overview, name="overview"),
        Route("/jobs", pages.jobs, name="jobs"),
        Route("/jobs/{job_id:path}", pages.job, name="job"),
        Route("/events", pages.events, name="events"),
        Route("/actions/{action}", forms.confirm, methods=["GET"], name="confirm"),
        Route("/actions/{action}", forms.act, methods=["POST"], name="act"),
        Route("/login", forms.login_page, methods=["GET"], name="login"),
        Route("/login", forms.login_post, methods=["POST"], name="login_post"),
        Route("/logout", forms.logout, methods=["POST"], name="logout"),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers: dict[Any, Any] = {
        HTTPException: _http_error,
        redis.RedisError: _redis_error,
    }
    # The body limit sits inside `SecurityHeaders` (Starlette's `max_body_size` would put it outside every
    # middleware): its 413 carries the security headers, and comes after the Host check.
    middleware = [
        Middleware(SecurityHeaders, hosts=hosts),
        Middleware(RequestBodyLimitMiddleware, max_body_size=DEFAULT_MAX_BODY_BYTES),
        Middleware(CatchAll),
    ]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=lifespan)
    app.state.console = console
    return app
