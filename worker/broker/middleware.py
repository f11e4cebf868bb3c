"""Dramatiq middleware: job context on every log line of a message, and per-message metrics."""

from __future__ import annotations

from typing import Any

import dramatiq
import structlog
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware

from worker.ops import metrics


class JobContext(Middleware):
    """Binds `job_id`, `actor` and `message_id` for the duration of each message, and measures poll lateness."""

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        job_id = message.args[0] if message.args else None
        structlog.contextvars.bind_contextvars(job_id=job_id, actor=message.actor_name, message_id=message.message_id)
        due_ms = message.options.get("due_ms")
        now_ms = getattr(broker, "redis_now_ms", None)  # CekuraBroker's estimate of the Redis server's clock
        if due_ms is not None and now_ms is not None:
            metrics.POLL_LATENESS.observe(max(0.0, (now_ms() - due_ms) / 1000))

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        structlog.contextvars.clear_contextvars()

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()
