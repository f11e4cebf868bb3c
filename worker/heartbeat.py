"""Worker heartbeats: each worker process records `<host>:<pid>` in a sorted set while its Dramatiq threads
are alive, which is what `cekura-worker healthcheck` and `cekura-worker status` read.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable

import redis
import structlog

from config.settings import Settings

log = structlog.get_logger(__name__)


def workers_key(settings: Settings) -> str:
    return settings.key("workers")


def member() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat(threading.Thread):
    """Beats every `CEKURA_HEARTBEAT_INTERVAL_S` while `alive()` says the worker's threads run."""

    def __init__(self, client: redis.Redis, settings: Settings, alive: Callable[[], bool]) -> None:
        super().__init__(name="cekura-heartbeat", daemon=True)
        self.client = client
        self.settings = settings
        self.alive = alive
        self.key = workers_key(settings)
        self.member = member()
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def beat(self) -> None:
        if self.alive():
            self.client.zadd(self.key, {self.member: int(time.time() * 1000)})
        else:
            log.error("worker_threads_dead", hint="heartbeat withheld so the healthcheck fails")

    def run(self) -> None:
        while True:
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("heartbeat_redis_error", error=str(exc))
            if self._stopping.wait(self.settings.cekura_heartbeat_interval_s):
                break
        with contextlib.suppress(redis.RedisError):
            self.client.zrem(self.key, self.member)


def live_workers(client: redis.Redis, settings: Settings, *, host: str | None = None) -> list[str]:
    """Members that beat within three intervals, optionally only those on `host`."""
    since = int((time.time() - 3 * settings.cekura_heartbeat_interval_s) * 1000)
    members = [m.decode() for m in client.zrangebyscore(workers_key(settings), since, "+inf")]
    return [m for m in members if host is None or m.rsplit(":", 1)[0] == host]
