"""Dramatiq middleware: job context on every log line of a message, per-message metrics, and the roster of the
worker's threads (from Dramatiq's documented thread boot and shutdown hooks)."""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
import structlog
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware

from worker import tracing
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
        tracing.leave()  # the thread's next message may be about another job, or about none (on or off: see leave)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()
        tracing.leave()


class ThreadRoster(Middleware):
    """The Dramatiq worker and consumer threads running on this broker, for the heartbeat's "alive" question.

    Threads join on their documented boot hooks and leave on their shutdown hooks, which Dramatiq emits only when a
    thread stops normally: a thread that died stays listed, not alive, so the process stops beating.
    """

    def __init__(self) -> None:
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def _join(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads.add(thread)

    def _leave(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads.discard(thread)

    def after_worker_thread_boot(self, broker: dramatiq.Broker, thread: Any) -> None:
        self._join(thread)

    def after_consumer_thread_boot(self, broker: dramatiq.Broker, thread: Any) -> None:
        self._join(thread)

    def before_worker_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        self._leave(thread)

    def before_consumer_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        self._leave(thread)

    def alive(self) -> bool:
        """True when some threads booted and every one of them still runs."""
        with self._lock:
            threads = list(self._threads)
        return bool(threads) and all(thread.is_alive() for thread in threads)
