"""Worker heartbeats: each worker process records `<host>:<pid>` in a sorted set while its Dramatiq threads
are alive, which is what `cekura-worker healthcheck` and `cekura-worker status` read.

Beats are scored with the Redis server's clock and read against it, so hosts whose clocks disagree still see
each other as alive. Beats older than `DEFAULT_HEARTBEAT_KEEP_S` are trimmed as new ones are written, so the
set holds only processes that ran recently, however many have come and gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable

import redis
import structlog

from config.settings import Settings

log = structlog.get_logger(__name__)

#: How long a process's last beat is kept after it stops (the healthcheck reports "last heartbeat N s ago").
DEFAULT_HEARTBEAT_KEEP_S = 3600


def server_ms(client: redis.Redis) -> int:
    """The Redis server's clock in epoch ms."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


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
            now = server_ms(self.client)
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(self.key, {self.member: now})
            pipe.zremrangebyscore(self.key, "-inf", now - DEFAULT_HEARTBEAT_KEEP_S * 1000)
            pipe.execute()
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
    since = server_ms(client) - int(3 * settings.cekura_heartbeat_interval_s * 1000)
    members = [m.decode() for m in client.zrangebyscore(workers_key(settings), since, "+inf")]
    return [m for m in members if host is None or m.rsplit(":", 1)[0] == host]
