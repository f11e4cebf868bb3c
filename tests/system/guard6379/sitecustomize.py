"""Refuses every redis-py connection to a forbidden port, in each Python process started with this folder on
`PYTHONPATH` (and `TEST_FORBIDDEN_REDIS_PORTS=6379`, say): a test's workers then fail loudly, with "test guard" in
their logs, instead of quietly reading and writing the machine's own Redis should some connection ever fall back to
redis-py's default address (localhost:6379). The failover tests also call `guard` in their own process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable


def guard(ports: Iterable[int]) -> Callable[[], None]:
    """Make every redis-py TCP connection to one of `ports` raise `redis.ConnectionError`; returns the undo."""
    import redis.connection
    from redis.exceptions import ConnectionError as RedisConnectionError

    forbidden = frozenset(int(port) for port in ports)
    original = redis.connection.Connection._connect

    def guarded(self: redis.connection.Connection) -> object:
        if int(self.port) in forbidden:
            raise RedisConnectionError(f"test guard: refused a connection to {self.host}:{self.port}")
        return original(self)

    redis.connection.Connection._connect = guarded

    def undo() -> None:
        redis.connection.Connection._connect = original

    return undo


_PORTS = [int(port) for port in os.environ.get("TEST_FORBIDDEN_REDIS_PORTS", "").split(",") if port.strip()]
if _PORTS:
    guard(_PORTS)
