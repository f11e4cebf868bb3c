"""Helpers for `test_attack_failover.py`: a switchable TCP endpoint (what a managed Redis's endpoint does in a
failover: it starts forwarding to another server), a private primary/replica pair, a stand-alone "rogue" Sentinel,
and a thread that keeps its own per-thread connection (as a Dramatiq worker thread does).

Nothing here reaches the machine's Redis on 6379: every server runs on a free port in a temporary directory.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tests.support import RedisServer, free_port, kill_group, redis_server_binary, wait_for


class SwitchableEndpoint:
    """A loopback TCP forwarder: clients connect to `port`, bytes go to the server on `target`. `switch(port)`
    points it at another server and cuts every open connection, as a managed Redis endpoint does on failover."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, name="attack-endpoint", daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._open -= {source, sink}

    def switch(self, target: int) -> None:
        self.target = target
        with self._lock:
            sockets = list(self._open)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.switch(self.target)


def linked(server: RedisServer) -> bool:
    with contextlib.suppress(redis.RedisError), server.client(socket_timeout=2) as c:
        return c.info("replication").get("master_link_status") == "up"
    return False


def make_replica(replica: RedisServer, primary: RedisServer) -> None:
    """`replica` replicates `primary` and has synced with it."""
    with primary.client() as c:
        c.config_set("repl-diskless-sync-delay", 0)
    with replica.client() as c:
        c.replicaof("127.0.0.1", primary.port)
    wait_for(lambda: linked(replica), 15, "the replica to sync")


def detach(replica: RedisServer) -> None:
    """The replica stops replicating and becomes a primary with what it has: a partition, then its promotion."""
    with replica.client() as c:
        c.replicaof("NO", "ONE")


class RogueSentinel:
    """A Sentinel of its own (it never meets the real ones) that monitors `service` on a server of its own: a
    Sentinel whose view is not the quorum's, as a stale or misconfigured one is."""

    def __init__(self, dir: Path, service: str, monitored_port: int) -> None:
        self.port = free_port()
        dir.mkdir(parents=True, exist_ok=True)
        config = dir / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {dir}\n"
            f"sentinel monitor {service} 127.0.0.1 {monitored_port} 1\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
        )
        log = (dir / "log").open("ab")
        self.popen = subprocess.Popen(
            [redis_server_binary(), str(config), "--sentinel"],
            cwd=dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def knows() -> bool:
            with contextlib.suppress(redis.RedisError), redis.Redis(port=self.port, socket_timeout=1) as c:
                return bool(c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", service))
            return False

        wait_for(knows, 15, "the rogue Sentinel to answer")

    def stop(self) -> None:
        kill_group(self.popen, grace_s=1.0)


class PinnedThread:
    """A thread that runs the callables it is given, one at a time, so that whatever per-thread state they use (a
    `ThreadConnections` connection) stays this thread's, as a Dramatiq worker thread's does."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[tuple[bool, Any]]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            fn, reply = item
            try:
                reply.put((True, fn()))
            except BaseException as exc:
                reply.put((False, exc))

    def call(self, fn: Callable[[], Any], timeout: float = 30) -> Any:
        reply: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self._jobs.put((fn, reply))
        ok, value = reply.get(timeout=timeout)
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=5)


def port_of(reply: Any) -> int:
    """The port in a `CONFIG GET port` reply."""
    if isinstance(reply, dict):
        return int(reply.get(b"port", reply.get("port")))
    return int(reply[1])


def discovered(ha: Any) -> int | None:
    """The primary's port as redis-py's Sentinel discovery (`SENTINEL MASTERS`, first valid answer) finds it now."""
    from redis.sentinel import MasterNotFoundError, Sentinel

    sentinel = Sentinel([("127.0.0.1", s.port) for s in ha.sentinels], socket_timeout=1)
    try:
        return int(sentinel.discover_master("cekura")[1])
    except MasterNotFoundError:
        return None
    finally:
        sentinel.close()
