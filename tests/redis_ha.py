"""A primary, a replica and three Sentinels on loopback, as real `redis-server` processes, for failover tests.

The Sentinels watch the primary as service `cekura` and fail it over about a second after it stops answering
(`down-after-milliseconds` 1000); `SENTINEL FAILOVER` demotes it on demand. Every process runs in its own
temporary directory and on free ports; nothing here touches the machine's Redis on 6379.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support import free_port, kill_group, redis_server_argv, redis_server_binary, wait_for

#: The Sentinel service name the tests use.
SERVICE = "cekura"

#: How long the Sentinels wait before they call the primary down (ms).
DOWN_AFTER_MS = 1000

#: A primary starts a replica's full sync at once, not after the default 5 s wait for more replicas to join it.
NO_SYNC_DELAY = ["--repl-diskless-sync-delay", "0"]


@dataclass
class _Process:
    name: str
    port: int
    popen: subprocess.Popen[bytes]

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2, **kwargs)  # type: ignore[arg-type]

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class RedisHA:
    """Start with `start()`; `url` is the `redis+sentinel://` URL the service is given."""

    dir: Path
    servers: list[_Process] = field(default_factory=list)
    sentinels: list[_Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def _spawn(self, name: str, port: int, argv: list[str]) -> _Process:
        workdir = self.dir / name
        workdir.mkdir(parents=True, exist_ok=True)
        log = (workdir / "log").open("ab")
        popen = subprocess.Popen(
            argv, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return _Process(name, port, popen)

    def _server(self, name: str, replica_of: int | None = None) -> _Process:
        port = free_port()
        argv = redis_server_argv(port, dir=self.dir / name) + NO_SYNC_DELAY
        (self.dir / name).mkdir(parents=True, exist_ok=True)
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        process = self._spawn(name, port, argv)
        wait_for(lambda: _answers(process), 15, f"{name} to answer PING")
        return process

    def start(self) -> RedisHA:
        primary = self._server("primary")
        replica = self._server("replica", replica_of=primary.port)
        self.servers = [primary, replica]
        wait_for(lambda: _linked(replica), 15, "the replica to sync with the primary")
        for i in range(3):
            port = free_port()
            config = self.dir / f"sentinel-{i}" / "sentinel.conf"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {config.parent}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            process = self._spawn(f"sentinel-{i}", port, [redis_server_binary(), str(config), "--sentinel"])
            self.sentinels.append(process)
        for sentinel in self.sentinels:
            wait_for(lambda s=sentinel: self._sees_replica(s), 20, "each Sentinel to know the primary and its replica")
        return self

    def _sees_replica(self, sentinel: _Process) -> bool:
        with contextlib.suppress(redis.RedisError), sentinel.client() as c:
            return (
                bool(c.execute_command("SENTINEL", "REPLICAS", SERVICE))
                and len(c.execute_command("SENTINEL", "SENTINELS", SERVICE)) >= 2
            )
        return False

    def primary_port(self) -> int | None:
        """The primary's port as the Sentinels now report it."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError), sentinel.client() as c:
                host_port = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                if host_port:
                    return int(host_port[1])
        return None

    def server(self, port: int) -> _Process:
        return next(s for s in self.servers if s.port == port)

    def primary(self) -> _Process:
        port = self.primary_port()
        assert port is not None
        return self.server(port)

    def kill_primary(self) -> _Process:
        """SIGKILL the current primary, as a crash would; returns it (restart it with `restart`)."""
        old = self.primary()
        old.popen.kill()
        old.popen.wait(timeout=10)
        return old

    def restart(self, old: _Process, *, replica_of: int | None = None) -> _Process:
        """Bring a killed server back on its port and return it. By itself it comes back as an empty primary, and
        the Sentinels turn it into a replica of the new one only after about ten seconds (they wait four of their
        publish periods, 2 s each, before they "convert" an instance that still says it is a primary, and then it
        syncs); with `replica_of` (the new primary's port) it starts as that server's replica, as an operator whose
        config names the new primary would bring it back, and is one as soon as it has synced."""
        argv = redis_server_argv(old.port, dir=self.dir / old.name) + NO_SYNC_DELAY
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        fresh = self._spawn(old.name, old.port, argv)
        self.servers[self.servers.index(old)] = fresh
        wait_for(lambda: _answers(fresh), 15, f"{old.name} to answer PING again")
        return fresh

    def wait_linked(self, replica: _Process, timeout: float = 20) -> None:
        """Wait until `replica` has synced with its primary (so `WAIT 1` on the primary can be answered)."""
        wait_for(lambda: _linked(replica), timeout, f"{replica.name} to sync with its primary")

    def failover(self) -> None:
        """Demote the primary on demand (`SENTINEL FAILOVER`), as a maintenance window does.

        The Sentinels promote the replica within about a second, but tell the old primary to become a replica only
        some ten seconds later (as for a restarted one, see `restart`); until then it still takes writes from every
        client connected to it, and loses them when it turns into the new primary's replica."""
        with self.sentinels[0].client() as c:
            c.execute_command("SENTINEL", "FAILOVER", SERVICE)

    def wait_new_primary(self, old_port: int, timeout: float = 20) -> int:
        """Wait until the Sentinels name a primary other than `old_port` and it accepts writes."""

        def moved() -> bool:
            port = self.primary_port()
            if port is None or port == old_port:
                return False
            with contextlib.suppress(redis.RedisError), self.server(port).client() as c:
                return c.info("replication")["role"] == "master"
            return False

        wait_for(moved, timeout, "the Sentinels to promote a new primary")
        port = self.primary_port()
        assert port is not None
        return port

    def stop(self) -> None:
        for process in [*self.sentinels, *self.servers]:
            if process.alive():
                kill_group(process.popen, grace_s=1.0)


def _answers(process: _Process) -> bool:
    with contextlib.suppress(redis.RedisError), process.client() as c:
        return bool(c.ping())
    return False


def _linked(replica: _Process) -> bool:
    with contextlib.suppress(redis.RedisError), replica.client() as c:
        return c.info("replication").get("master_link_status") == "up"
    return False


def wait_replicated(primary: _Process, timeout_s: float = 5.0) -> None:
    """Wait until every replica has acknowledged what the primary has written so far."""
    deadline = time.monotonic() + timeout_s
    with primary.client() as c:
        while time.monotonic() < deadline:
            if c.execute_command("WAIT", 1, 100) >= 1:
                return
    raise AssertionError("the replica did not catch up")
