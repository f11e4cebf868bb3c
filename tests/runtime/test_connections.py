"""The worker's per-thread connections: one Redis connection and one Cekura keep-alive connection per thread,
each replaced when it breaks, without the caller seeing an error."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from actors.kinds import KINDS
from config.settings import Settings
from simulator import SimulatorHandle
from tests.support import wait_for
from worker.cekura.client import CekuraClient
from worker.runtime.connection import ThreadConnections, connect, thread_connections

KIND = KINDS["metric.clean_description"]
BODY = {"agent": 1, "metric_description": "calls end politely", "eval_type": "boolean"}


T = TypeVar("T")


def in_thread(fn: Callable[[], T]) -> T:
    """Run `fn` in a new thread and return its result."""
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(value=fn()))
    thread.start()
    thread.join(timeout=30)
    return box["value"]


def test_one_redis_connection_per_thread(settings: Settings) -> None:
    client = connect(settings)
    conns = thread_connections(client)
    assert thread_connections(client) is conns  # one set per pool

    mine = {conns.execute("CLIENT", "ID") for _ in range(5)}
    other = in_thread(lambda: {conns.execute("CLIENT", "ID") for _ in range(5)})

    assert len(mine) == 1 and len(other) == 1
    assert mine != other
    # None of it came from the shared pool.
    assert client.connection_pool._created_connections == 0
    conns.close()
    client.close()


def test_a_killed_redis_connection_is_replaced_on_the_next_command(
    settings: Settings, redis_client: redis.Redis
) -> None:
    conns = ThreadConnections(connect(settings).connection_pool)
    before = conns.execute("CLIENT", "ID")
    assert redis_client.client_kill_filter(_id=before) == 1

    after = conns.execute("CLIENT", "ID")  # retried on a new connection, no error

    assert after != before
    assert conns.execute("CLIENT", "ID") == after
    conns.close()


def test_an_error_reply_keeps_the_redis_connection(settings: Settings) -> None:
    conns = ThreadConnections(connect(settings).connection_pool)
    before = conns.execute("CLIENT", "ID")
    try:
        conns.execute("EVALSHA", "0" * 40, 0)
    except redis.exceptions.NoScriptError:
        pass
    else:
        raise AssertionError("EVALSHA of an unknown script must raise NoScriptError")
    assert conns.execute("CLIENT", "ID") == before
    conns.close()


def test_each_thread_keeps_one_cekura_connection_alive(settings: Settings, sim: SimulatorHandle) -> None:
    # The simulator serves the whole session: a connection an earlier test left open would close at any moment.
    sim.close_connections()
    wait_for(lambda: sim.stats()["connections_open"] == 0, what="the simulator to close every connection")
    cekura = CekuraClient(settings)
    params = KIND.validate(BODY)
    before = sim.stats()

    def calls() -> None:
        progress_id = cekura.start(KIND, params).progress_id
        for _ in range(4):
            assert cekura.progress(KIND, params, progress_id)[0]

    calls()
    in_thread(calls)
    calls()

    after = sim.stats()
    assert after["connections_total"] - before["connections_total"] == 2
    assert after["connections_open"] - before["connections_open"] == 2
    cekura.close()
    wait_for(lambda: sim.stats()["connections_open"] == before["connections_open"], what="the connections to close")


def test_a_cekura_connection_closed_by_the_server_is_replaced(settings: Settings, sim: SimulatorHandle) -> None:
    cekura = CekuraClient(settings)
    params = KIND.validate(BODY)
    progress_id = cekura.start(KIND, params).progress_id
    opened = sim.stats()["connections_total"]

    sim.close_connections()
    wait_for(lambda: sim.stats()["connections_open"] == 0, what="the simulator to close every connection")

    assert cekura.progress(KIND, params, progress_id)[0]  # no error: a fresh connection
    assert sim.stats()["connections_total"] - opened == 1
    cekura.close()
