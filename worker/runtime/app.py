"""Process wiring: `setup()` builds the broker, the job store and the Cekura client once per process.

Dramatiq binds an actor to the global broker when its module is imported, so imports run one way: `setup()`
sets the broker first and never imports actors; the entry points that run actors (a worker process,
`worker.runtime.process.main`, and the test session) call `setup()` and then `bind_actors()`. Calling `setup()`
again with other settings moves bound actors to a new broker when the Redis URL or key prefix changed (their
messages then live under the new namespace); a different queue is refused, since actors are declared on theirs.
"""

from __future__ import annotations

import importlib
import sys
import threading
from dataclasses import dataclass, field

import dramatiq
import redis
from dramatiq.middleware import Retries, TimeLimit

from actors import names
from config.settings import Settings, get_settings
from worker import redact, tracing
from worker.broker.redis_broker import CekuraBroker
from worker.cekura.client import CekuraClient
from worker.cekura.polling import PollingBook
from worker.errors import ConfigError
from worker.runtime import logging as service_logging
from worker.runtime.connection import connect, thread_connections
from worker.store.jobs import JobStore


@dataclass
class Runtime:
    """Everything a worker process shares between its threads."""

    settings: Settings
    redis: redis.Redis
    store: JobStore
    broker: CekuraBroker
    polling: PollingBook
    _cekura: CekuraClient | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def cekura(self) -> CekuraClient:
        """The Cekura client, built once on first use (producers never need it, nor the API key)."""
        if self._cekura is None:
            with self._lock:
                if self._cekura is None:
                    self._cekura = _cekura_client(self.settings)
        return self._cekura


_runtime: Runtime | None = None


def _cekura_client(settings: Settings) -> CekuraClient:
    """The Cekura client: one that makes a span of every call when this process traces."""
    if tracing.enabled:
        from worker.tracing.calls import TracedCekuraClient

        return TracedCekuraClient(settings)
    return CekuraClient(settings)


def build_broker(settings: Settings, client: redis.Redis) -> CekuraBroker:
    """The Dramatiq broker with the lean middleware the actors use (each actor declares its own limits)."""
    from worker.broker.middleware import JobContext

    middleware = [JobContext(), TimeLimit(), Retries(min_backoff=1000, max_backoff=60_000)]
    return CekuraBroker(client=client, middleware=middleware, namespace=settings.key("dramatiq"))


def setup(settings: Settings | None = None, *, configure_logging: bool = True) -> Runtime:
    """Configure this process for `settings` and return its runtime; safe to call again with new settings."""
    global _runtime
    settings = settings or get_settings()
    previous = _runtime
    if previous is not None and _actors_bound() and settings.cekura_queue != previous.settings.cekura_queue:
        raise ConfigError(
            f"CEKURA_QUEUE can't change from {previous.settings.cekura_queue!r} to {settings.cekura_queue!r} in a "
            "process whose actors are bound: they were declared on the first queue (start a new process)"
        )
    if configure_logging:
        service_logging.configure(settings)
    redact.register_settings(settings)
    tracing.setup(settings)  # before the Cekura client is made: traced or not
    client = connect(settings)
    same_namespace = previous is not None and (
        previous.settings.redis_url == settings.redis_url
        and previous.settings.cekura_key_prefix == settings.cekura_key_prefix
    )
    if previous is not None and same_namespace:
        broker = previous.broker  # actors stay bound to the broker they were declared on
    else:
        broker = build_broker(settings, client)
        dramatiq.set_broker(broker)
        if previous is not None:
            # Actors are bound to the broker they were declared on: move them to the new one.
            for name in previous.broker.get_declared_actors():
                actor = previous.broker.get_actor(name)
                actor.broker = broker
                broker.declare_actor(actor)
    if previous is not None:
        if previous._cekura is not None:
            previous._cekura.close()
        thread_connections(previous.redis).close()  # reconnected on next use, if the client is still in use
    store = JobStore(client, settings, per_thread=True)
    broker.fetch_claims = store.fetch_claims(names.POLL)
    _runtime = Runtime(
        settings=settings, redis=client, store=store, broker=broker, polling=PollingBook(client, settings)
    )
    return _runtime


def bind_actors() -> None:
    """Declare the actors on the broker `setup()` made (once per process; an entry point calls it after setup)."""
    runtime()  # the broker must exist before the actors' module binds to it
    importlib.import_module("actors.jobs")


def _actors_bound() -> bool:
    return "actors.jobs" in sys.modules


def runtime() -> Runtime:
    """The runtime `setup()` built for this process."""
    if _runtime is None:
        raise RuntimeError("worker.runtime.app.setup() has not been called in this process")
    return _runtime
