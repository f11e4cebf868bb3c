"""Redis connections: one pool per process, built from `REDIS_URL` (redis://, rediss:// for TLS, unix://).

Commands retry on connection errors with exponential backoff, so a Redis restart or a dropped connection
costs a short pause, not a crash.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from config.settings import Settings

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
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    }
    if settings.redis_url.get_secret_value().startswith("rediss://"):
        kwargs["ssl_cert_reqs"] = "required"
        if settings.redis_ca_bundle:
            kwargs["ssl_ca_certs"] = settings.redis_ca_bundle
    return kwargs


def connect(settings: Settings, **overrides: Any) -> redis.Redis:
    """A client on a fresh connection pool for `settings.redis_url`."""
    kwargs = connection_kwargs(settings) | overrides
    pool = redis.ConnectionPool.from_url(settings.redis_url.get_secret_value(), **kwargs)
    return redis.Redis(connection_pool=pool)
