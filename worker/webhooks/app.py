"""The webhook receiver as an ASGI application: `POST /webhooks/cekura` takes Cekura's result webhooks.

A webhook is a hint, never a verdict. `result.completed` names a result id; the receiver finds the job polling that
result (`worker.store.results.ResultIndex`) and makes its next poll due now (`hasten.lua`): an ordinary poll that
claims the job like any other and reads `GET results/{id}/`. The job ends only on what that call says, so a forged,
stale, duplicated or late webhook costs at most one progress call, and a webhook for an unknown result costs
nothing. The receiver never calls Cekura, answers in milliseconds, and answers 503 when Redis can't be reached so
that Cekura delivers again.

- `X-CEKURA-SECRET` must equal CEKURA_WEBHOOK_SECRET (compared in constant time), else 401 and nothing is done.
- A body over CEKURA_WEBHOOK_MAX_BYTES is 413; a body that is not a JSON object, or a `result.completed` without a
  result id, is 400; any other event type is acknowledged (200) and ignored.
- `GET /metrics`: the receiver's counters (`cekura_webhooks_total{outcome}`), `GET /healthz`: it is up.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any

import redis
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from redis.backoff import NoBackoff
from redis.retry import Retry
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from actors import names
from config.settings import Settings
from worker.redact import redact
from worker.runtime.connection import connect
from worker.store.jobs import JobStore
from worker.store.results import ResultIndex

log = structlog.get_logger(__name__)

#: The one event this receiver acts on.
RESULT_COMPLETED = "result.completed"

#: While a poll holds the job (its lease), the webhook is tried again this often, for at most the lease.
DEFAULT_BUSY_RETRY_S = 0.25

#: Socket timeouts of the receiver's Redis connection, in seconds.
DEFAULT_REDIS_TIMEOUT_S = 2.0

WEBHOOKS = Counter(
    "cekura_webhooks_total",
    "Result webhooks received, by what became of them: refused (bad secret), malformed, ignored (another event "
    "type), matched (a job polls now), unmatched (no job polls that result, or it ended).",
    ["outcome"],
)


class Receiver:
    """What the routes share: the settings, the secret, and the job store the hints go through."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        if settings.cekura_webhook_secret is None:
            raise ValueError("CEKURA_WEBHOOK_SECRET is not set: the receiver would take anyone's webhooks")
        self.settings = settings
        secret = settings.cekura_webhook_secret.get_secret_value()
        #: The secret's bytes as a sender may put it in a header: UTF-8, or latin-1 (Python's http.client).
        self.secret_forms = [secret.encode()]
        if not secret.isascii() and all(ord(c) < 256 for c in secret):
            self.secret_forms.append(secret.encode("latin-1"))
        # Short timeouts and one retry: a Redis that hangs must cost Cekura a quick 503 (it delivers again), not a
        # request held for a minute.
        quick = {"socket_timeout": DEFAULT_REDIS_TIMEOUT_S, "socket_connect_timeout": DEFAULT_REDIS_TIMEOUT_S}
        self.store = JobStore(client or connect(settings, retry=Retry(NoBackoff(), 1), **quick), settings)
        self.results = ResultIndex(self.store)
        #: Results whose job a poll held when their webhook came: one retry task each, kept referenced.
        self.waiting: dict[str, asyncio.Task[None]] = {}

    def authentic(self, request: Request) -> bool:
        """The first X-CEKURA-SECRET header, as the bytes sent (any encoding), equals the secret."""
        given = next((value for name, value in request.scope["headers"] if name == b"x-cekura-secret"), b"").strip()
        return any(hmac.compare_digest(given, form) for form in self.secret_forms)

    def hasten(self, result_id: str) -> tuple[str, str]:
        s = self.settings
        return self.results.hasten(
            result_id, queue_name=s.cekura_queue, namespace=s.key("dramatiq"), poll_actor=names.POLL
        )


def _answer(outcome: str, status: int = 200, **extra: Any) -> JSONResponse:
    WEBHOOKS.labels(outcome).inc()
    return JSONResponse({"outcome": outcome, **extra}, status_code=status)


async def _body(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _result_id(payload: Any) -> str | None:
    data = payload.get("data") if isinstance(payload, dict) else None
    value = data.get("id") if isinstance(data, dict) else None
    text = str(value)
    if isinstance(value, bool) or not isinstance(value, int | str) or not (text.isascii() and text.isdigit()):
        return None
    return str(int(text)) if len(text) <= 32 else None  # "050000" names result 50000


async def receive(request: Request) -> Response:
    receiver: Receiver = request.app.state.receiver
    if not receiver.authentic(request):
        log.warning("webhook_refused", reason="wrong or missing X-CEKURA-SECRET")
        return _answer("refused", 401)
    body = await _body(request, receiver.settings.cekura_webhook_max_bytes)
    if body is None:
        return _answer("malformed", 413, error=f"body over {receiver.settings.cekura_webhook_max_bytes} bytes")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return _answer("malformed", 400, error="body is not JSON")
    if not isinstance(payload, dict):
        return _answer("malformed", 400, error="body is not a JSON object")
    event_type = payload.get("event_type")
    if event_type != RESULT_COMPLETED:
        log.info("webhook_ignored", event_type=redact(str(event_type))[:64])
        return _answer("ignored")
    result_id = _result_id(payload)
    if result_id is None:
        return _answer("malformed", 400, error="result.completed without a result id in data.id")
    try:
        verdict, job_id = await run_in_threadpool(receiver.hasten, result_id)
    except redis.RedisError as exc:
        log.warning("webhook_redis_error", result_id=result_id, error=redact(str(exc)))
        WEBHOOKS.labels("unavailable").inc()
        return JSONResponse({"outcome": "unavailable", "error": "Redis is unreachable: deliver again"}, 503)
    if verdict == "busy":
        if result_id not in receiver.waiting:
            task = asyncio.get_running_loop().create_task(_when_free(receiver, result_id))
            receiver.waiting[result_id] = task
            task.add_done_callback(lambda _: receiver.waiting.pop(result_id, None))
        verdict = "ok"
    matched = verdict == "ok"
    log.info("webhook_received", result_id=result_id, job_id=job_id or None, verdict=verdict)
    return _answer("matched" if matched else "unmatched", job_id=job_id, verdict=verdict)


async def _when_free(receiver: Receiver, result_id: str) -> None:
    """A poll holds the job (it may have read Cekura just before the result ended): try again until it lets go,
    for at most one lease; after that the job polls on its safety-net schedule."""
    for _ in range(int(receiver.settings.cekura_lease_s / DEFAULT_BUSY_RETRY_S)):
        await asyncio.sleep(DEFAULT_BUSY_RETRY_S)
        try:
            verdict, _ = await run_in_threadpool(receiver.hasten, result_id)
        except redis.RedisError:
            continue
        if verdict != "busy":
            return


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def create_app(settings: Settings, client: redis.Redis | None = None) -> Starlette:
    app = Starlette(
        routes=[
            Route("/webhooks/cekura", receive, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
    app.state.receiver = Receiver(settings, client)
    return app
