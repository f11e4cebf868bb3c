"""Process wiring: `setup()` builds the broker, the job store and the Cekura client once, then imports the actors.

Dramatiq binds actors to the global broker when their module is imported, so `setup()` is the one place
that sets the broker first; worker processes, the CLI and `tests/conftest.py` all go through it.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field

import dramatiq
import redis
from dramatiq.middleware import Retries, TimeLimit

from actors import names
from config.settings import Settings, get_settings
from worker import logging as service_logging
from worker import redact
from worker.broker import CekuraBroker
from worker.cekura import CekuraClient
from worker.connection import connect, thread_connections
from worker.store import JobStore


@dataclass
class Runtime:
    """Everything a worker process shares between its threads."""

    settings: Settings
    redis: redis.Redis
    store: JobStore
    broker: CekuraBroker
    _cekura: CekuraClient | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def cekura(self) -> CekuraClient:
        """The Cekura client, built once on first use (producers never need it, nor the API key)."""
        if self._cekura is None:
            with self._lock:
                if self._cekura is None:
                    self._cekura = CekuraClient(self.settings)
        return self._cekura


_runtime: Runtime | None = None


def build_broker(settings: Settings, client: redis.Redis) -> CekuraBroker:
    """The Dramatiq broker with the lean middleware the actors use (each actor declares its own limits)."""
    from worker.middleware import JobContext

    middleware = [JobContext(), TimeLimit(), Retries(min_backoff=1000, max_backoff=60_000)]
    return CekuraBroker(client=client, middleware=middleware, namespace=settings.key("dramatiq"))


def setup(settings: Settings | None = None, *, configure_logging: bool = True) -> Runtime:
    """Configure this process for `settings` and return its runtime; safe to call again with new settings."""
    global _runtime
    settings = settings or get_settings()
    if configure_logging:
        service_logging.configure(settings)
    redact.register_settings(settings)
    client = connect(settings)
    same_redis = _runtime is not None and _runtime.settings.redis_url == settings.redis_url
    if _runtime is not None and same_redis:
        broker = _runtime.broker  # actors stay bound to the broker they were declared on
    else:
        broker = build_broker(settings, client)
        dramatiq.set_broker(broker)
        if _runtime is not None:
            # Actors are bound to the broker they were declared on: move them to the new one.
            for name in _runtime.broker.get_declared_actors():
                actor = _runtime.broker.get_actor(name)
                actor.broker = broker
                broker.declare_actor(actor)
    if _runtime is not None:
        if _runtime._cekura is not None:
            _runtime._cekura.close()
        thread_connections(_runtime.redis).close()  # reconnected on next use, if the client is still in use
    store = JobStore(client, settings, per_thread=True)
    broker.fetch_claims = store.fetch_claims(names.POLL)
    _runtime = Runtime(settings=settings, redis=client, store=store, broker=broker)
    importlib.import_module("actors.jobs")
    return _runtime


def runtime() -> Runtime:
    """The runtime `setup()` built for this process."""
    if _runtime is None:
        raise RuntimeError("worker.app.setup() has not been called in this process")
    return _runtime
