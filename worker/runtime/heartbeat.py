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
import weakref
from collections.abc import Callable
from pathlib import Path

import redis
import structlog
from redis.sentinel import SentinelConnectionPool

from config.settings import Settings
from worker.runtime.connection import server_ms, thread_connections

log = structlog.get_logger(__name__)

#: How long a beat waits for its look at the Sentinels (it goes on in the background if they are slow).
DEFAULT_FOLLOW_WAIT_S = 1.0

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
        self._watch: threading.Thread | None = None

    def stop(self) -> None:
        self._stopping.set()

    def _follow(self) -> None:
        """With Sentinel: move this process's connections when the primary moved (`sentinel.follow_primary`)."""
        try:
            if follow_primary(self.client):
                log.warning("redis_primary_moved", hint="the Sentinels name a new primary: reconnecting to it")
        except (redis.RedisError, OSError) as exc:
            log.warning("sentinel_unreachable", error=str(exc))

    def beat(self) -> None:
        try:
            self._beat()
        finally:
            # Then follow the primary (also when the beat failed), in a thread of its own waited for a moment:
            # Sentinels that hang must not hold the next beat up.
            if self._watch is None or not self._watch.is_alive():
                self._watch = threading.Thread(target=self._follow, name="cekura-sentinel-watch", daemon=True)
                self._watch.start()
            self._watch.join(DEFAULT_FOLLOW_WAIT_S)

    def _beat(self) -> None:
        if self.alive():
            now = server_ms(self.client)
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(self.key, {self.member: now})
            pipe.zremrangebyscore(self.key, "-inf", now - DEFAULT_HEARTBEAT_KEEP_S * 1000)
            pipe.execute()
        else:
            log.error("worker_threads_dead", hint="heartbeat withheld so the healthcheck fails")

    def run(self) -> None:
        interval = self.settings.cekura_heartbeat_interval_s
        while True:
            began = time.monotonic()
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("heartbeat_redis_error", error=str(exc))
            # Beats keep their period: the time a beat spent (up to DEFAULT_FOLLOW_WAIT_S on the Sentinels) comes off
            # the wait. Waiting the whole interval after it beat every 2 s while every Sentinel hung, and readiness and
            # `status` call a process whose beat is 3 s old dead.
            if self._stopping.wait(max(0.0, interval - (time.monotonic() - began))):
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


#: The primary each Sentinel-managed pool was last seen on by `follow_primary` (not the pool's own record, which
#: every new connection updates).
_followed: weakref.WeakKeyDictionary[SentinelConnectionPool, tuple[str, int]] = weakref.WeakKeyDictionary()
_followed_lock = threading.Lock()


def follow_primary(client: redis.Redis) -> bool:
    """For a client of a primary found through Sentinel: ask the Sentinels where the primary is now and, if it moved
    since the last call, drop the client's connections (pooled and per-thread) so the next command goes to the new
    one. True if it moved. Raises what the Sentinels' search raises (the caller carries on)."""
    pool = client.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return False
    now = pool.get_master_address()
    threads = thread_connections(client)
    with _followed_lock:
        before = _followed.get(pool)
        _followed[pool] = now
    # A thread's connection opened before the move still goes to the old primary, even when another connection
    # has since learnt the new one (and with it the pool's own record of the address).
    stale = any(address != now for address in threads.addresses())
    if not stale and before in (None, now):
        return False
    threads.close()
    pool.disconnect(inuse_connections=True)
    return True
