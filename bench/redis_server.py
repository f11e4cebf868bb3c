"""A private, throw-away redis-server per benchmark phase, with replicas attached when a poller asks for them.

A fresh server per phase (no persistence, loopback only) means no leftover keys, no other user's traffic in
`used_memory`, and no risk of touching the shared Redis on 6379.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.processes import Child, spawn
from tests.support import free_port, redis_server_argv, wait_redis_ready

#: Seconds to wait for redis-server to answer PING.
DEFAULT_START_TIMEOUT_S = 10.0
#: Seconds to wait for a replica's first sync (`master_link_status:up`).
DEFAULT_SYNC_TIMEOUT_S = 15.0


@dataclass
class RedisServer:
    """A running private redis-server and a client connected to it (and the replicas attached to it, if any)."""

    child: Child
    port: int
    client: redis.Redis
    replicas: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The URL the pollers are given (db 0 of this private server)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def used_memory(self) -> int:
        """INFO memory's used_memory, in bytes."""
        return int(self.client.info("memory")["used_memory"])

    def stop(self) -> None:
        """Close the client and kill the server (its replicas first)."""
        for replica in self.replicas:
            replica.stop()
        self.client.close()
        self.child.stop(grace_s=2.0)


def start_redis(log_dir: Path, name: str, replicas: int = 0) -> RedisServer:
    """Start redis-server on a free port and wait until it answers PING; then attach `replicas` replicas."""
    server = _start(log_dir, name, [])
    try:
        if replicas:
            # Full sync straight over the socket, at once (Redis 7 waits 5 s for more replicas by default).
            server.client.config_set("repl-diskless-sync", "yes")
            server.client.config_set("repl-diskless-sync-delay", "0")
        for index in range(replicas):
            server.replicas.append(start_replica(server, log_dir, f"{name}-replica{index}"))
    except BaseException:
        server.stop()
        raise
    return server


def start_replica(primary: RedisServer, log_dir: Path, name: str) -> RedisServer:
    """A second redis-server with `--replicaof` the primary, returned once its `master_link_status` is up.

    It loads the primary's snapshot straight from the socket and keeps no file (its `--dir` is its log directory)."""
    extra = ["--replicaof", "127.0.0.1", str(primary.port), "--repl-diskless-load", "on-empty-db"]
    replica = _start(log_dir, name, extra)
    deadline = time.monotonic() + DEFAULT_SYNC_TIMEOUT_S
    while replica.client.info("replication").get("master_link_status") != "up":
        if not replica.child.alive() or time.monotonic() > deadline:
            replica.stop()
            raise RuntimeError(f"replica {name} did not sync with port {primary.port}:\n{replica.child.log_tail()}")
        time.sleep(0.05)
    return replica


def _start(log_dir: Path, name: str, extra_argv: list[str]) -> RedisServer:
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    child = spawn(name, [*redis_server_argv(port, dir=log_dir.resolve()), *extra_argv], env={}, log_dir=log_dir)
    client = redis.Redis(host="127.0.0.1", port=port)
    if not wait_redis_ready(child.popen, client, DEFAULT_START_TIMEOUT_S):
        child.stop()
        raise RuntimeError(f"redis-server on port {port} did not start:\n{child.log_tail()}")
    return RedisServer(child=child, port=port, client=client)
