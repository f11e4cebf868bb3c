"""A private, throw-away redis-server per benchmark phase.

A fresh server per phase (no persistence, loopback only) means no leftover keys, no other user's traffic in
`used_memory`, and no risk of touching the shared Redis on 6379.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis

from bench.processes import Child, spawn
from tests.support import free_port, redis_server_argv, wait_redis_ready

#: Seconds to wait for redis-server to answer PING.
DEFAULT_START_TIMEOUT_S = 10.0


@dataclass
class RedisServer:
    """A running private redis-server and a client connected to it."""

    child: Child
    port: int
    client: redis.Redis

    @property
    def url(self) -> str:
        """The URL the pollers are given (db 0 of this private server)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def used_memory(self) -> int:
        """INFO memory's used_memory, in bytes."""
        return int(self.client.info("memory")["used_memory"])

    def stop(self) -> None:
        """Close the client and kill the server."""
        self.client.close()
        self.child.stop(grace_s=2.0)


def start_redis(log_dir: Path, name: str) -> RedisServer:
    """Start redis-server on a free port and wait until it answers PING."""
    port = free_port()
    child = spawn(name, redis_server_argv(port), env={}, log_dir=log_dir)
    client = redis.Redis(host="127.0.0.1", port=port)
    if not wait_redis_ready(child.popen, client, DEFAULT_START_TIMEOUT_S):
        child.stop()
        raise RuntimeError(f"redis-server on port {port} did not start:\n{child.log_tail()}")
    return RedisServer(child=child, port=port, client=client)
