"""A private, throw-away redis-server per benchmark phase.

A fresh server per phase (no persistence, loopback only) means no leftover keys, no other user's traffic in
`used_memory`, and no risk of touching the shared Redis on 6379.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.processes import Child, free_port, spawn

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
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    child = spawn(name, argv, env={}, log_dir=log_dir)
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + DEFAULT_START_TIMEOUT_S
    while True:
        try:
            client.ping()
            return RedisServer(child=child, port=port, client=client)
        except redis.ConnectionError:
            if not child.alive() or time.monotonic() > deadline:
                child.stop()
                raise RuntimeError(f"redis-server on port {port} did not start:\n{child.log_tail()}") from None
            time.sleep(0.05)
