"""Redis connections: one pool per process, built from `REDIS_URL` (redis://, rediss:// for TLS, unix://, or
redis+sentinel:// and rediss+sentinel:// for a primary found through Sentinel).

Commands retry on connection errors with exponential backoff, so a Redis restart or a dropped connection
costs a short pause, not a crash. A failover is one more such error: a `READONLY` reply (a connection still on
the old primary, now a replica) disconnects and retries, so the next attempt connects afresh, through Sentinel
(redis-py's `SentinelConnectionPool` asks the Sentinels for the current primary) or, with a plain URL, through
the endpoint a managed Redis moves to the new primary.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ReadOnlyError
from redis.retry import Retry

from config.settings import SENTINEL_SCHEMES, Settings

#: How many times a command is retried on a connection error before the error reaches the caller.
DEFAULT_COMMAND_RETRIES = 5

#: Socket timeouts in seconds; blocking reads (XREADGROUP BLOCK) pass their own, longer timeout.
DEFAULT_SOCKET_TIMEOUT_S = 10.0


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `redis.ConnectionPool.from_url`, shared by the broker and the job store."""
    kwargs: dict[str, Any] = {
        "socket_timeout": DEFAULT_SOCKET_TIMEOUT_S,
        "socket_connect_timeout": 5.0,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), DEFAULT_COMMAND_RETRIES),
        # READONLY: this connection is on a primary that was demoted (a failover): reconnect and try again.
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError, ReadOnlyError],
    }
    if settings.redis_url.get_secret_value().startswith(("rediss://", "rediss+sentinel://")):
        kwargs["ssl_cert_reqs"] = "required"
        if settings.redis_ca_bundle:
            kwargs["ssl_ca_certs"] = settings.redis_ca_bundle
    return kwargs


def connect(settings: Settings, **overrides: Any) -> redis.Redis:
    """A client on a fresh connection pool for `settings.redis_url` (the current primary, with Sentinel)."""
    kwargs = connection_kwargs(settings) | overrides
    url = settings.redis_url.get_secret_value()
    if url.split("://", 1)[0] in SENTINEL_SCHEMES:
        from worker.runtime.sentinel import sentinel_primary  # it imports this module

        return sentinel_primary(settings, kwargs)
    pool = redis.ConnectionPool.from_url(url, **kwargs)
    return redis.Redis(connection_pool=pool)


class ThreadConnections:
    """A dedicated connection per thread, with the pool's settings, for the worker's hot-path commands.

    On every command, redis-py's pool takes a lock, checks the pid twice and peeks at the socket for stray
    data (three system calls). A worker thread sends one command at a time and reads its reply in full, so on
    a connection of its own none of that is needed: at saturation this took about 6 system calls, and as many
    GIL handoffs, off every poll. Errors are handled as the pool's connections handle them: a connection error
    disconnects and is retried with the client's backoff, and anything that interrupts a round trip midway
    disconnects too, so a half-read reply can never be taken for the next one.
    """

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self.pool = pool
        self._local = threading.local()
        self._all: weakref.WeakSet[redis.connection.AbstractConnection] = weakref.WeakSet()

    def execute(self, *args: Any) -> Any:
        """Send one command on this thread's connection and return its (unparsed) reply."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self.pool.connection_class(**self.pool.connection_kwargs)
            self._local.connection = connection
            self._all.add(connection)
        return connection.retry.call_with_retry(
            lambda: _round_trip(connection, args), lambda _error: connection.disconnect()
        )

    def addresses(self) -> set[tuple[str, int]]:
        """Where the threads' open connections go (host, port)."""
        return {(str(c.host), int(c.port)) for c in list(self._all) if getattr(c, "_sock", None) is not None}

    def close(self) -> None:
        """Disconnect every thread's connection while none is in use (each reconnects on its next command)."""
        for connection in list(self._all):
            connection.disconnect()


def _round_trip(connection: redis.connection.AbstractConnection, args: tuple[Any, ...]) -> Any:
    try:
        # Connect through `connect()` (a no-op once connected), never lazily inside `send_command`: that path dials
        # the connection's stored address, which a Sentinel-managed connection learns only in `connect()` (it would
        # otherwise dial redis-py's default, localhost:6379).
        connection.connect()
        connection.send_command(*args)
        return connection.read_response()
    except redis.ResponseError:
        raise  # an error reply, read in full: the connection is still in step
    except BaseException:
        connection.disconnect()
        raise


_per_pool: weakref.WeakKeyDictionary[redis.ConnectionPool, ThreadConnections] = weakref.WeakKeyDictionary()
_per_pool_lock = threading.Lock()


def thread_connections(client: redis.Redis) -> ThreadConnections:
    """The `ThreadConnections` of `client`'s pool (one set per pool, shared by everything using it)."""
    pool = client.connection_pool
    with _per_pool_lock:
        found = _per_pool.get(pool)
        if found is None:
            found = _per_pool[pool] = ThreadConnections(pool)
        return found


def time_ms(reply: Any) -> int:
    """A TIME reply (seconds, microseconds) as epoch ms, for a TIME sent in a pipeline."""
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


def server_ms(client: redis.Redis) -> int:
    """The Redis server's clock in epoch ms: the one clock every due time, deadline, lease and heartbeat is on, so
    whatever is compared with them is read from it too."""
    return time_ms(client.time())
