"""Worker heartbeats: each worker process records `<host>:<pid>` in a sorted set while its Dramatiq threads
(and its intake and reconciler threads) are alive, which is what `healthcheck --readiness` and `status` read.

Beats are scored with the Redis server's clock and read against it, so hosts whose clocks disagree still see
each other as alive. Beats older than `DEFAULT_HEARTBEAT_KEEP_S` are trimmed as new ones are written, so the set
holds only processes that ran recently, however many have come and gone.

`LocalBeat` touches a file of this process's in `CEKURA_HEALTH_DIR` on the same condition, in a thread of its own
so that a Redis outage (whose commands may block for seconds while they retry) never delays it: that file is what
`healthcheck --liveness` reads, so a live worker never looks dead because Redis is away.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis
import structlog

from config.settings import Settings
from worker.runtime.connection import follow_primary, server_ms

log = structlog.get_logger(__name__)

#: How long a process's last beat is kept after it stops (the healthcheck reports "last heartbeat N s ago").
DEFAULT_HEARTBEAT_KEEP_S = 3600


def local_beat_path(settings: Settings, pid: int | None = None) -> Path:
    """This process's liveness file: `<CEKURA_HEALTH_DIR>/<pid>.alive`."""
    return Path(settings.cekura_health_dir) / f"{pid or os.getpid()}.alive"


def touch_local(settings: Settings) -> None:
    """Record on local disk that this process's worker threads are alive now."""
    path = local_beat_path(settings)
    try:
        path.touch()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


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
        if follow_primary(self.client):
            log.warning("redis_primary_moved", hint="the Sentinels name a new primary: this process reconnects to it")
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


class LocalBeat(threading.Thread):
    """Touches this process's liveness file every `CEKURA_HEARTBEAT_INTERVAL_S` while `alive()`; removes it on stop."""

    def __init__(self, settings: Settings, alive: Callable[[], bool]) -> None:
        super().__init__(name="cekura-local-beat", daemon=True)
        self.settings = settings
        self.alive = alive
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while True:
            try:
                if self.alive():
                    touch_local(self.settings)
            except OSError as exc:
                log.warning("local_heartbeat_failed", error=str(exc))
            if self._stopping.wait(self.settings.cekura_heartbeat_interval_s):
                break
        with contextlib.suppress(OSError):
            local_beat_path(self.settings).unlink()


def live_local_processes(settings: Settings) -> list[tuple[int, float]]:
    """(pid, seconds since its last beat) of this host's worker processes that are running, freshest first."""
    out: list[tuple[int, float]] = []
    now = time.time()
    try:
        entries = list(Path(settings.cekura_health_dir).glob("*.alive"))
    except OSError:
        return out
    for path in entries:
        try:
            pid, age = int(path.stem), now - path.stat().st_mtime
            os.kill(pid, 0)
        except (ValueError, OSError):
            continue  # not ours, or its process is gone
        out.append((pid, max(0.0, age)))
    return sorted(out, key=lambda item: item[1])


def live_workers(client: redis.Redis, settings: Settings, *, host: str | None = None) -> list[str]:
    """Members that beat within three intervals, optionally only those on `host`."""
    since = server_ms(client) - int(3 * settings.cekura_heartbeat_interval_s * 1000)
    members = [m.decode() for m in client.zrangebyscore(workers_key(settings), since, "+inf")]
    return [m for m in members if host is None or m.rsplit(":", 1)[0] == host]
